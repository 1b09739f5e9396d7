// Command tendctl is Tend's admin CLI, kubectl-like: apply policies, list
// agents, policies and checks, create join tokens.
//
// main.go only wires flags and commands; each command lives in its own file.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"tend.dev/tend/internal/version"
)

// DefaultConfig is used when neither --config nor $TEND_CONFIG is set.
const DefaultConfig = "./tend-data/admin.conf"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// run executes one tendctl command line and returns the exit code: 0, or 1
// after printing "error: ..." to stderr.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	a := &app{
		stdin:  stdin,
		stdout: stdout,
		stderr: stderr,
		getenv: getenv,
		now:    time.Now,
	}
	defer a.close()
	root := newRootCmd(a)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	if !errors.Is(err, errReported) {
		msg := err.Error()
		var ue usageError
		if errors.As(err, &ue) {
			msg += "\nSee 'tendctl " + ue.cmd + " --help'."
		}
		fmt.Fprintln(stderr, "error: "+msg)
	}
	return 1
}

// errReported ends a command that has already printed its errors.
var errReported = errors.New("errors reported")

// usageError is a mistake in the command line.
type usageError struct {
	cmd string
	msg string
}

func (e usageError) Error() string { return e.msg }

func usageErrorf(cmd *cobra.Command, format string, args ...any) error {
	path := strings.TrimPrefix(cmd.CommandPath(), "tendctl ")
	return usageError{cmd: path, msg: fmt.Sprintf(format, args...)}
}

func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "tendctl",
		Short: "Administer a Tend control plane",
		Long: `tendctl administers a Tend control plane: apply policies, look at agents,
policies, checks, incidents and tasks, approve tasks, re-arm policies, create
join tokens for new agents and credentials for people, rotate the
task-signing key.

It connects with the credential in an admin config: admin.conf, which the
control plane writes to DATA_DIR/admin.conf on first start (role admin), or
one written by tendctl credential create (role viewer, operator or admin).
The file is taken from --config, else $TEND_CONFIG, else ` + DefaultConfig + `.`,
		Example: `  TOKEN=$(tendctl token create --ttl 1h --uses 3)
  tendctl apply -f deploy/examples/web-nginx-down.yaml
  tendctl get agents
  tendctl get checks -o json
  tendctl describe policy web-nginx-down
  tendctl approve task task-3f2a9c1d0b7e4a55
  tendctl credential create alice --role operator --out alice.conf`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		Version:           version.Version,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageErrorf(cmd, "%v", err)
	})
	pf := root.PersistentFlags()
	pf.StringVar(&a.configPath, "config", "", "admin config file (default $TEND_CONFIG, else "+DefaultConfig+")")
	pf.DurationVar(&a.timeout, "timeout", 10*time.Second, "timeout of each call to the control plane")

	root.AddCommand(
		newTokenCmd(a),
		newApplyCmd(a),
		newGetCmd(a),
		newDescribeCmd(a),
		newDeleteCmd(a),
		newApproveCmd(a),
		newRearmCmd(a),
		newCredentialCmd(a),
		newKeysCmd(a),
		&cobra.Command{
			Use:   "version",
			Short: "Print tendctl's version",
			Args:  noArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				fmt.Fprintln(a.stdout, version.Version)
				return nil
			},
		},
	)
	return root
}

// noArgs refuses positional arguments with a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf(cmd, "unexpected argument %q", args[0])
	}
	return nil
}
