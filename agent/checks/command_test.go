package checks

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

func TestCommandFactoryValidation(t *testing.T) {
	tests := []struct {
		name    string
		argv    []string
		wantErr string
	}{
		{"empty", nil, "argv is empty"},
		{"empty argv0", []string{""}, "argv is empty"},
		{"relative path", []string{"./check.sh"}, "relative path"},
		{"not in PATH", []string{"tend-no-such-program-xyz"}, "not found in PATH"},
		{"NUL", []string{"/bin/true", "a\x00b"}, "NUL"},
		{"absolute", []string{"/usr/lib/nagios/plugins/check_x", "-w", "1"}, ""},
		{"from PATH", []string{"sh", "-c", "true"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(commandSpec(tt.argv...))
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

func TestCommandExitCodes(t *testing.T) {
	sh := lookPath(t, "sh")
	tests := []struct {
		name   string
		script string
		status agentv1.CheckStatus
		output string
	}{
		{"ok", "echo all good; exit 0", statusOK, "all good"},
		{"warning", "echo load high >&2; exit 1", statusWarning, "load high"},
		{"critical", "echo down; exit 2", statusCritical, "down"},
		{"unknown", "echo confused; exit 3", statusUnknown, "confused"},
		{"other code", "exit 7", statusUnknown, "exited with status 7, which is not a Nagios code"},
		{"no output", "exit 0", statusOK, "exited with status 0"},
		{"killed by signal", "kill -TERM $$", statusUnknown, "killed by signal terminated"},
		{"escape in output", "printf 'a\\033[2Jb\\n'; exit 2", statusCritical, `a\x1b[2Jb`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := run(t, mustNew(t, commandSpec(sh, "-c", tt.script)), 5*time.Second)
			require.Equal(t, tt.status, res.Status, res.Output)
			require.Contains(t, res.Output, tt.output)
			require.NotContains(t, res.Output, "\x1b")
		})
	}
}

func TestCommandNotStartable(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	res := run(t, mustNew(t, commandSpec(missing)), 2*time.Second)
	require.Equal(t, statusUnknown, res.Status, res.Output)
	require.Contains(t, res.Output, "cannot run")
}

// TestCommandTimeoutKillsGroup: on timeout the whole process group goes,
// including a grandchild, and the check returns promptly.
func TestCommandTimeoutKillsGroup(t *testing.T) {
	sh := lookPath(t, "sh")
	sleep := lookPath(t, "sleep")
	pidfile := filepath.Join(t.TempDir(), "grandchild.pid")
	script := sleep + " 30 & echo $! > " + pidfile + "; echo started; wait"
	c := mustNew(t, commandSpec(sh, "-c", script))

	start := time.Now()
	res := run(t, c, 500*time.Millisecond)
	require.Less(t, time.Since(start), 3*time.Second, "the check must not wait for the sleep")
	require.Equal(t, statusUnknown, res.Status, res.Output)
	require.Contains(t, res.Output, "timed out after 500ms")
	require.Contains(t, res.Output, "started")

	gc := readPid(t, pidfile)
	t.Cleanup(func() { _ = syscallKill(gc) })
	require.Eventually(t, func() bool { return processGone(gc) }, 5*time.Second, 10*time.Millisecond, "grandchild %d must be killed", gc)
}

// TestCommandBackgroundChild: a program that exits at once but leaves a
// child holding its stdout neither hangs the check nor leaves the child.
func TestCommandBackgroundChild(t *testing.T) {
	sh := lookPath(t, "sh")
	sleep := lookPath(t, "sleep")
	pidfile := filepath.Join(t.TempDir(), "child.pid")
	script := sleep + " 30 & echo $! > " + pidfile + "; echo fine; exit 0"
	c := mustNew(t, commandSpec(sh, "-c", script))

	start := time.Now()
	res := run(t, c, 10*time.Second)
	require.Less(t, time.Since(start), 5*time.Second)
	require.Equal(t, statusOK, res.Status, res.Output)
	require.Contains(t, res.Output, "fine")

	child := readPid(t, pidfile)
	t.Cleanup(func() { _ = syscallKill(child) })
	require.Eventually(t, func() bool { return processGone(child) }, 5*time.Second, 10*time.Millisecond)
}

func TestCommandHugeOutputCapped(t *testing.T) {
	seq := lookPath(t, "seq")
	res := run(t, mustNew(t, commandSpec(seq, "1", "3000000")), 10*time.Second)
	require.Equal(t, statusOK, res.Status, res.Output[:100])
	require.LessOrEqual(t, len(res.Output), MaxOutput)
	require.True(t, strings.HasPrefix(res.Output, "1\n2\n3\n"))
	require.True(t, strings.HasSuffix(res.Output, "more bytes of output dropped]"), "the cut is marked")
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	var pid int
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 0
	}, 5*time.Second, 10*time.Millisecond)
	return pid
}
