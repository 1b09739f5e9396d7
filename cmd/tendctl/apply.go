package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"tend.dev/tend/internal/policy"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

// policyFile is one file given to apply -f, read and checked locally.
type policyFile struct {
	name    string // as shown in messages and sent to the server
	content []byte
}

func newApplyCmd(a *app) *cobra.Command {
	var (
		files  []string
		dryRun bool
	)
	cmd := &cobra.Command{
		Use:   "apply -f FILE [-f FILE...]",
		Short: "Create or update policies from YAML files",
		Long: `Create or update the policies of one or more files (one or more Policy
documents per file, separated by "---").

Every file is parsed and validated locally first: if any file has a problem,
every problem is listed as FILE:LINE: FIELD: MESSAGE and nothing is sent.
The control plane then applies each file all or nothing, and for each policy
tendctl prints policy/NAME created, configured or unchanged.

-f - reads stdin; -f DIR applies the *.yaml and *.yml files of DIR.`,
		Example: `  tendctl apply -f deploy/examples/web-nginx-down.yaml
  tendctl apply -f deploy/examples/
  cat policy.yaml | tendctl apply -f -`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return usageErrorf(cmd, "no file given: use -f FILE (or -f - for stdin)")
			}
			pfs, err := readPolicyFiles(a.stdin, files)
			if err != nil {
				return err
			}
			if err := validateLocally(a.stderr, pfs); err != nil {
				return err
			}
			failed := 0
			for _, pf := range pfs {
				resp, err := call(cmd.Context(), a, adminv1.AdminServiceClient.ApplyPolicies, &adminv1.ApplyPoliciesRequest{
					Filename: pf.name,
					Content:  pf.content,
					DryRun:   dryRun,
				})
				if err != nil {
					if len(pfs) == 1 {
						return err
					}
					failed++
					fmt.Fprintf(a.stderr, "error: %s: nothing applied from this file: %v\n", pf.name, err)
					continue
				}
				for _, c := range resp.GetChanges() {
					fmt.Fprintf(a.stdout, "policy/%s %s\n", c.GetName(), c.GetAction())
				}
			}
			if failed > 0 {
				fmt.Fprintf(a.stderr, "error: %d of %d files not applied\n", failed, len(pfs))
				return errReported
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "policy file, directory or - for stdin (repeatable)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "let the control plane validate the files without storing anything")
	return cmd
}

// readPolicyFiles reads the -f arguments: files, directories (their *.yaml
// and *.yml files, sorted) and "-" for stdin (once).
func readPolicyFiles(stdin io.Reader, args []string) ([]policyFile, error) {
	var out []policyFile
	stdinUsed := false
	for _, arg := range args {
		if arg == "-" {
			if stdinUsed {
				return nil, errors.New("-f - given twice: stdin can be read only once")
			}
			stdinUsed = true
			b, err := io.ReadAll(stdin)
			if err != nil {
				return nil, fmt.Errorf("read stdin: %w", err)
			}
			out = append(out, policyFile{name: "<stdin>", content: b})
			continue
		}
		st, err := os.Stat(arg)
		if err != nil {
			return nil, fmt.Errorf("read policy file: %w", err)
		}
		paths := []string{arg}
		if st.IsDir() {
			paths = nil
			for _, pattern := range []string{"*.yaml", "*.yml"} {
				m, _ := filepath.Glob(filepath.Join(arg, pattern))
				paths = append(paths, m...)
			}
			sort.Strings(paths)
			if len(paths) == 0 {
				return nil, fmt.Errorf("directory %s holds no *.yaml or *.yml file", arg)
			}
		}
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				return nil, fmt.Errorf("read policy file: %w", err)
			}
			out = append(out, policyFile{name: p, content: b})
		}
	}
	return out, nil
}

// validateLocally parses every file with the control plane's own parser and
// prints every problem; it fails if any file has one.
func validateLocally(errOut io.Writer, pfs []policyFile) error {
	var bad []string
	problems := 0
	for _, pf := range pfs {
		if _, err := policy.Parse(pf.name, pf.content); err != nil {
			var verr *policy.ValidationError
			if errors.As(err, &verr) {
				problems += len(verr.Errors)
			} else {
				problems++
			}
			fmt.Fprintln(errOut, err)
			bad = append(bad, pf.name)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	plural := "s"
	if problems == 1 {
		plural = ""
	}
	fmt.Fprintf(errOut, "error: %d problem%s in %s: nothing was applied\n", problems, plural, strings.Join(bad, ", "))
	return errReported
}
