// Package noshell holds a repository-wide test: no Tend program ever runs
// anything through a shell (docs/DESIGN.md: "No action ever goes through a
// shell"). It reads the source of every non-test Go file of the programs
// (agent/, plugins/, controlplane/, internal/, cmd/) and fails on
//
//   - a string literal that names a shell ("sh", "/bin/bash", "busybox",
//     "/usr/bin/env", ...), wherever it is: in exec.Command's arguments, in
//     cmd.Path or cmd.Args, in a constant used later;
//   - a "-c" literal passed to a process-starting call (exec.Command,
//     exec.CommandContext, os.StartProcess, syscall.Exec,
//     syscall.ForkExec, unix.Exec).
//
// A shell is never needed: every command is an argv with an absolute path.
package noshell

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// dirs are the program trees scanned, relative to the repository root.
var dirs = []string{"agent", "plugins", "controlplane", "internal", "cmd"}

// shells are program names that interpret a command line; interpreters
// are flagged only as absolute paths (a bare "env" may well be a field
// name).
var (
	shells = map[string]bool{
		"sh": true, "bash": true, "dash": true, "zsh": true, "ksh": true, "mksh": true, "csh": true,
		"tcsh": true, "fish": true, "ash": true, "busybox": true, "cmd.exe": true, "powershell": true, "pwsh": true,
	}
	interpreters = map[string]bool{"env": true, "python": true, "python3": true, "perl": true, "ruby": true}
)

// startFuncs are the process-starting functions, by import path.
var startFuncs = map[string][]string{
	"os/exec":               {"Command", "CommandContext"},
	"os":                    {"StartProcess"},
	"syscall":               {"Exec", "ForkExec", "StartProcess"},
	"golang.org/x/sys/unix": {"Exec"},
}

func isShell(s string) bool {
	s = strings.TrimSpace(s)
	if s == "" {
		return false
	}
	return shells[s] || strings.HasPrefix(s, "/") && (shells[path.Base(s)] || interpreters[path.Base(s)])
}

// check returns the problems of one Go source file.
func check(fset *token.FileSet, f *ast.File) []string {
	var problems []string
	report := func(n ast.Node, format string, args ...any) {
		problems = append(problems, fset.Position(n.Pos()).String()+": "+fmt.Sprintf(format, args...))
	}
	// Local names of the imports that start processes.
	funcs := map[string][]string{}
	for _, imp := range f.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		names, ok := startFuncs[p]
		if !ok {
			continue
		}
		local := path.Base(p)
		if imp.Name != nil {
			local = imp.Name.Name
		}
		funcs[local] = names
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch x := n.(type) {
		case *ast.BasicLit:
			if x.Kind == token.STRING {
				if s, err := strconv.Unquote(x.Value); err == nil && isShell(s) {
					report(x, "string %q names a shell; run the program itself, with an argv, never through a shell", s)
				}
			}
		case *ast.CallExpr:
			sel, ok := x.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			pkg, ok := sel.X.(*ast.Ident)
			if !ok || !contains(funcs[pkg.Name], sel.Sel.Name) {
				return true
			}
			for _, a := range x.Args {
				if lit, ok := a.(*ast.BasicLit); ok && lit.Kind == token.STRING {
					if s, _ := strconv.Unquote(lit.Value); s == "-c" {
						report(lit, "%s.%s with \"-c\": a command line for a shell", pkg.Name, sel.Sel.Name)
					}
				}
			}
		}
		return true
	})
	return problems
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func TestNoShellAnywhere(t *testing.T) {
	root := filepath.Join("..", "..")
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root not found from %s: %v", root, err)
	}
	fset := token.NewFileSet()
	files := 0
	var problems []string
	for _, d := range dirs {
		err := filepath.WalkDir(filepath.Join(root, d), func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if e.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return nil
			}
			f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
			if err != nil {
				return err
			}
			files++
			problems = append(problems, check(fset, f)...)
			return nil
		})
		if err != nil {
			t.Fatalf("scanning %s: %v", d, err)
		}
	}
	if files < 50 {
		t.Fatalf("scanned only %d Go files under %v: wrong root?", files, dirs)
	}
	for _, p := range problems {
		t.Error(p)
	}
	t.Logf("%d non-test Go files scanned, %d problems", files, len(problems))
}

// The checker finds what it is meant to find.
func TestCheckerFindsShells(t *testing.T) {
	src := `package x

import (
	"os"
	osexec "os/exec"
	"syscall"
)

const shell = "/bin/sh"

func f(s string) {
	osexec.Command("sh", "-c", s)
	osexec.CommandContext(nil, "/usr/bin/bash", "-c", s)
	osexec.Command(shell, "-c", s)
	osexec.Command("/usr/bin/env", s)
	_ = syscall.Exec("/bin/dash", []string{"dash", "-c", s}, nil)
	_, _ = os.StartProcess("/bin/busybox", []string{"sh"}, nil)
	osexec.Command("/usr/bin/printf", "%s", "-c")
	osexec.Command("/bin/true")
	_ = "shell"
}
`
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "x.go", src, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := check(fset, f)
	// line: what the problem says.
	want := []string{
		`9: string "/bin/sh" names a shell`,
		`12: string "sh" names a shell`,
		`12: osexec.Command with "-c"`,
		`13: string "/usr/bin/bash" names a shell`,
		`13: osexec.CommandContext with "-c"`,
		`14: osexec.Command with "-c"`,
		`15: string "/usr/bin/env" names a shell`,
		`16: string "/bin/dash" names a shell`,
		`16: string "dash" names a shell`,
		`17: string "/bin/busybox" names a shell`,
		`17: string "sh" names a shell`,
		`18: osexec.Command with "-c"`,
	}
	if len(got) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for _, w := range want {
		line, msg, _ := strings.Cut(w, ": ")
		found := false
		for _, g := range got {
			found = found || strings.HasPrefix(g, "x.go:"+line+":") && strings.Contains(g, msg)
		}
		if !found {
			t.Errorf("no problem %q in:\n%s", w, strings.Join(got, "\n"))
		}
	}
}
