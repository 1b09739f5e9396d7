package tasks

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	"tend.dev/tend/agent/config"
)

// FuzzAllowListArgv: an exec.run argv passes the allow-list if and only if
// it is exactly an allowed argv; a path passes disk.cleanup only if it is a
// clean absolute path under the allowed one. Never a panic.
func FuzzAllowListArgv(f *testing.F) {
	allowedArgv := []string{"/usr/local/bin/rotate-logs", "--now"}
	a, err := NewAllowList(map[string]config.ActionRule{
		"exec.run":     {Commands: [][]string{allowedArgv}},
		"disk.cleanup": {Paths: []string{"/nonexistent-tend-fuzz/app"}},
	})
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{"--now", "--now;id", "--now\nid", "$(id)", "`id`", "-", "--now\x00", ""} {
		f.Add("/usr/local/bin/rotate-logs", s, "/nonexistent-tend-fuzz/app/"+s)
	}
	f.Fuzz(func(t *testing.T, prog, arg, path string) {
		argv := []any{prog, arg}
		p, err := structpb.NewStruct(map[string]any{"argv": argv})
		if err != nil {
			return // not valid UTF-8: cannot be in a task either
		}
		err = a.Check("exec.run", p)
		exact := slices.Equal([]string{prog, arg}, allowedArgv)
		if (err == nil) != exact {
			t.Fatalf("argv %q: allowed=%v, want %v (%v)", argv, err == nil, exact, err)
		}
		p, err = structpb.NewStruct(map[string]any{"path": path})
		if err != nil {
			return
		}
		if a.Check("disk.cleanup", p) == nil {
			t.Fatalf("path %q passed although nothing exists under the allowed path", path)
		}
	})
}
