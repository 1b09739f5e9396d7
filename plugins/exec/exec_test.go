package exec

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"tend.dev/tend/plugins/sdk"
)

func TestParseRun(t *testing.T) {
	tests := []struct {
		name   string
		action string
		params map[string]any
		want   []string
		err    string
	}{
		{name: "ok", params: map[string]any{"argv": []any{"/usr/local/bin/rotate-logs", "--now"}}, want: []string{"/usr/local/bin/rotate-logs", "--now"}},
		{name: "just argv0", params: map[string]any{"argv": []any{"/bin/true"}}, want: []string{"/bin/true"}},
		{name: "missing", params: map[string]any{}, err: "param argv: required"},
		{name: "not a list", params: map[string]any{"argv": "/bin/true --now"}, err: "param argv: want a list of strings, got string"},
		{name: "empty", params: map[string]any{"argv": []any{}}, err: "param argv: required, and must not be empty"},
		{name: "relative", params: map[string]any{"argv": []any{"rotate-logs"}}, err: `param argv[0]: want the program's clean absolute path (commands never go through a shell or $PATH), got "rotate-logs"`},
		{name: "unclean", params: map[string]any{"argv": []any{"/usr/bin/../bin/sh"}}, err: `param argv[0]: want the program's clean absolute path`},
		{name: "number element", params: map[string]any{"argv": []any{"/bin/sleep", 1.0}}, err: "param argv[1]: want a string, got number"},
		{name: "unknown param", params: map[string]any{"argv": []any{"/bin/true"}, "shell": true}, err: "param shell: unknown parameter (known: argv)"},
		{name: "unknown action", action: "exec.shell", params: map[string]any{}, err: `unknown action "exec.shell" (this plugin serves: exec.run)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			action := tt.action
			if action == "" {
				action = ActionRun
			}
			got, err := parseRun(action, tt.params)
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got.Argv)
		})
	}
}

func execute(t *testing.T, timeout time.Duration, argv ...string) sdk.ExecuteResult {
	t.Helper()
	c := sdk.TestClient(t, New(nil))
	l := make([]any, len(argv))
	for i, a := range argv {
		l[i] = a
	}
	res, err := c.Execute(context.Background(), sdk.ExecuteRequest{TaskID: "t1", Action: ActionRun, Params: map[string]any{"argv": l}, Timeout: timeout})
	require.NoError(t, err)
	return res
}

func TestExitCodes(t *testing.T) {
	res := execute(t, 10*time.Second, "/bin/sh", "-c", "echo out; echo err >&2; exit 0")
	require.True(t, res.Success)
	require.Equal(t, 0.0, res.Metrics["exit_code"])
	require.Contains(t, res.Output, `"/bin/sh" exited 0`)
	require.Contains(t, res.Output, "out\nerr\n")

	res = execute(t, 10*time.Second, "/bin/sh", "-c", "exit 3")
	require.False(t, res.Success)
	require.Equal(t, 3.0, res.Metrics["exit_code"])
	require.Contains(t, res.Output, `"/bin/sh" exited 3`)

	res = execute(t, 10*time.Second, "/bin/sh", "-c", "kill -TERM $$")
	require.False(t, res.Success)
	require.Equal(t, -1.0, res.Metrics["exit_code"])
	require.Contains(t, res.Output, "signal: terminated")

	res = execute(t, 10*time.Second, "/nonexistent/tend-test-binary")
	require.False(t, res.Success)
	require.Contains(t, res.Output, `cannot start "/nonexistent/tend-test-binary"`)
}

func TestNoShellNoEnv(t *testing.T) {
	// Arguments are passed as they are: no globbing, no variables.
	res := execute(t, 10*time.Second, "/bin/echo", "$HOME", "*", ";", "rm")
	require.True(t, res.Success)
	require.Contains(t, res.Output, "$HOME * ; rm\n")

	t.Setenv("TEND_SECRET_TEST", "leak")
	res = execute(t, 10*time.Second, "/usr/bin/env")
	require.True(t, res.Success)
	require.NotContains(t, res.Output, "TEND_SECRET_TEST")
	require.Contains(t, res.Output, "PATH=/usr/local/sbin")
}

func TestOutputKeepsHeadAndTail(t *testing.T) {
	res := execute(t, 10*time.Second, "/bin/sh", "-c", `echo FIRST; i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done; echo LAST`)
	require.True(t, res.Success)
	require.LessOrEqual(t, len(res.Output), sdk.MaxOutput)
	require.Contains(t, res.Output, "FIRST")
	require.Contains(t, res.Output, "LAST")
	require.Contains(t, res.Output, "bytes left out")
}

func TestHeadTail(t *testing.T) {
	h := newHeadTail(4, 4)
	for _, s := range []string{"ab", "cdef", "ghij", "k"} {
		n, err := h.Write([]byte(s))
		require.NoError(t, err)
		require.Equal(t, len(s), n)
	}
	require.Equal(t, "abcd\n…[3 bytes left out]…\nhijk", h.String())
	h = newHeadTail(4, 4)
	_, _ = h.Write([]byte("abcdef"))
	require.Equal(t, "abcdef", h.String())
}

// alive reports whether pid is a running (not zombie) process.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && len(b) > i+2 && b[i+2] != 'Z' && b[i+2] != 'X'
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	var pid int
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(path)
		if err != nil || !strings.HasSuffix(string(b), "\n") {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	}, 10*time.Second, 10*time.Millisecond)
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	return pid
}

func TestTimeoutKillsTheGroup(t *testing.T) {
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "grandchild.pid")
	start := time.Now()
	// The shell starts a grandchild and waits; both must die at the deadline.
	res := execute(t, 2*time.Second, "/bin/sh", "-c", "/bin/sleep 300 & echo $! > "+pidfile+"; wait")
	require.Less(t, time.Since(start), 10*time.Second)
	require.False(t, res.Success)
	require.Equal(t, 1.0, res.Metrics["timed_out"])
	require.Contains(t, res.Output, "did not finish before the deadline")
	grandchild := readPid(t, pidfile)
	require.Eventually(t, func() bool { return !alive(grandchild) }, 5*time.Second, 20*time.Millisecond, "grandchild %d survived the timeout", grandchild)
}

func TestLeftoversAreKilledAtExit(t *testing.T) {
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "bg.pid")
	// A background process that closes its output and outlives the command.
	res := execute(t, 10*time.Second, "/bin/sh", "-c", "/bin/sleep 300 >/dev/null 2>&1 & echo $! > "+pidfile)
	require.True(t, res.Success, res.Output)
	bg := readPid(t, pidfile)
	require.Eventually(t, func() bool { return !alive(bg) }, 5*time.Second, 20*time.Millisecond)

	// One that keeps the output pipe open is killed as soon as the command
	// exits, without waiting for the pipe.
	pidfile2 := filepath.Join(dir, "bg2.pid")
	res = execute(t, 20*time.Second, "/bin/sh", "-c", "/bin/sleep 300 & echo $! > "+pidfile2)
	require.True(t, res.Success, res.Output)
	require.NotContains(t, res.Output, "kept its output open")
	bg2 := readPid(t, pidfile2)
	require.Eventually(t, func() bool { return !alive(bg2) }, 5*time.Second, 20*time.Millisecond)

	// A daemon in its own session is not ours to kill; its open output
	// only delays the result by waitDelay.
	pidfile3 := filepath.Join(dir, "daemon.pid")
	res = execute(t, 20*time.Second, "/bin/sh", "-c", "/usr/bin/setsid /bin/sh -c 'echo $$ > "+pidfile3+"; exec /bin/sleep 300' & while [ ! -s "+pidfile3+" ]; do /bin/sleep 0.01; done")
	require.True(t, res.Success, res.Output)
	require.Contains(t, res.Output, "kept its output open")
	daemon := readPid(t, pidfile3)
	require.True(t, alive(daemon))
}

func TestDescribe(t *testing.T) {
	c := sdk.TestClient(t, New(nil))
	d, err := c.Describe(context.Background())
	require.NoError(t, err)
	require.Equal(t, "exec", d.GetName())
	require.Equal(t, "run", d.GetActions()[0].GetName())
	err = c.Validate(context.Background(), ActionRun, map[string]any{"argv": []any{"sh"}})
	require.ErrorIs(t, err, sdk.ErrInvalidParams)
}
