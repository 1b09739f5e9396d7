package process

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"tend.dev/tend/plugins/sdk"
)

func TestParseParams(t *testing.T) {
	restart := func(kv ...any) map[string]any {
		m := map[string]any{"match": map[string]any{"pidfile": "/run/nginx.pid"}, "command": []any{"/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf"}}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name   string
		action string
		params map[string]any
		want   any
		err    string
	}{
		{name: "restart by pidfile", action: ActionRestart, params: restart(),
			want: restartParams{Match: matchParams{Pidfile: "/run/nginx.pid"}, Command: []string{"/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf"}, Grace: defaultGrace, Confirm: defaultConfirm}},
		{name: "restart by name with timings", action: ActionRestart, params: restart("match", map[string]any{"name": "nginx"}, "grace", "3s", "confirm", "500ms"),
			want: restartParams{Match: matchParams{Name: "nginx"}, Command: []string{"/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf"}, Grace: 3 * time.Second, Confirm: 500 * time.Millisecond}},
		{name: "no match", action: ActionRestart, params: map[string]any{"command": []any{"/bin/true"}}, err: "param match: required"},
		{name: "match not an object", action: ActionRestart, params: restart("match", "nginx"), err: "invalid params: param match: want an object, got string"},
		{name: "empty match", action: ActionRestart, params: restart("match", map[string]any{}), err: "param match: set exactly one of name or pidfile"},
		{name: "both", action: ActionRestart, params: restart("match", map[string]any{"name": "nginx", "pidfile": "/run/nginx.pid"}), err: "param match: set exactly one of name or pidfile, not both"},
		{name: "empty name", action: ActionRestart, params: restart("match", map[string]any{"name": ""}), err: "param match.name: required, and must not be empty"},
		{name: "name with slash", action: ActionRestart, params: restart("match", map[string]any{"name": "/usr/sbin/nginx"}), err: "param match.name: want a bare program name"},
		{name: "relative pidfile", action: ActionRestart, params: restart("match", map[string]any{"pidfile": "nginx.pid"}), err: "param match.pidfile: want a clean absolute path"},
		{name: "pidfile number", action: ActionRestart, params: restart("match", map[string]any{"pidfile": 12.0}), err: "param match.pidfile: want a string, got number"},
		{name: "unknown in match", action: ActionRestart, params: restart("match", map[string]any{"pid": 12.0}), err: "param match.pid: unknown parameter (known: name, pidfile)"},
		{name: "no command", action: ActionRestart, params: map[string]any{"match": map[string]any{"name": "x"}}, err: "param command: required"},
		{name: "command as string", action: ActionRestart, params: restart("command", "/usr/sbin/nginx -c x"), err: "param command: want a list of strings, got string"},
		{name: "relative command", action: ActionRestart, params: restart("command", []any{"nginx"}), err: `param command[0]: want the program's clean absolute path`},
		{name: "grace too long", action: ActionRestart, params: restart("grace", "1h"), err: "param grace: at most 5m0s, got 1h0m0s"},
		{name: "bad confirm", action: ActionRestart, params: restart("confirm", "soon"), err: `param confirm: want a duration`},
		{name: "unknown", action: ActionRestart, params: restart("shell", true), err: "param shell: unknown parameter (known: command, confirm, grace, match)"},

		{name: "kill default signal", action: ActionKill, params: map[string]any{"match": map[string]any{"name": "runaway"}},
			want: killParams{Match: matchParams{Name: "runaway"}, Signal: syscall.SIGTERM, SignalName: "TERM"}},
		{name: "kill HUP", action: ActionKill, params: map[string]any{"match": map[string]any{"pidfile": "/run/x.pid"}, "signal": "HUP"},
			want: killParams{Match: matchParams{Pidfile: "/run/x.pid"}, Signal: syscall.SIGHUP, SignalName: "HUP"}},
		{name: "kill SIGKILL", action: ActionKill, params: map[string]any{"match": map[string]any{"name": "x"}, "signal": "SIGKILL"},
			want: killParams{Match: matchParams{Name: "x"}, Signal: syscall.SIGKILL, SignalName: "KILL"}},
		{name: "kill bad signal", action: ActionKill, params: map[string]any{"match": map[string]any{"name": "x"}, "signal": "term"}, err: `param signal: want one of ABRT, CONT, HUP, INT, KILL, QUIT, STOP, TERM, USR1, USR2, WINCH, got "term"`},
		{name: "kill numeric signal", action: ActionKill, params: map[string]any{"match": map[string]any{"name": "x"}, "signal": 9.0}, err: `param signal: want a string, got number`},
		{name: "kill with command", action: ActionKill, params: map[string]any{"match": map[string]any{"name": "x"}, "command": []any{"/bin/true"}}, err: `param command: unknown parameter (known: match, signal)`},
		{name: "unknown action", action: "process.start", params: map[string]any{}, err: `unknown action "process.start" (this plugin serves: process.kill, process.restart)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parse(tt.action, tt.params)
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

// started is a process a test started; it is killed and reaped at cleanup.
type started struct {
	cmd *exec.Cmd
	pid int
}

func startProc(t *testing.T, argv ...string) *started {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, cmd.Start())
	s := &started{cmd: cmd, pid: cmd.Process.Pid}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-s.pid, syscall.SIGKILL)
		<-done
	})
	return s
}

// alive reports whether pid is a running, non-zombie process.
func alive(pid int) bool {
	st, err := procFS{root: "/proc"}.stat(pid)
	return err == nil && !st.gone()
}

func killAtCleanup(t *testing.T, pid int) {
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
}

func writePidfile(t *testing.T, dir string, pid int) string {
	t.Helper()
	p := filepath.Join(dir, "app.pid")
	require.NoError(t, os.WriteFile(p, []byte(strconv.Itoa(pid)+"\n"), 0o644))
	return p
}

func execute(t *testing.T, action string, params map[string]any) sdk.ExecuteResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := New(nil).Execute(ctx, sdk.ExecuteRequest{TaskID: "t1", Action: action, Params: params, Timeout: 30 * time.Second})
	require.NoError(t, err)
	return res
}

// uniqueBinary copies /bin/sleep to a file named with a unique prefix (at
// most 15 bytes, so that it is also the process's comm), so that matching
// by name can never touch another test's processes.
func uniqueBinary(t *testing.T, prefix string) (string, string) {
	t.Helper()
	b := make([]byte, 4)
	_, err := rand.Read(b)
	require.NoError(t, err)
	name := prefix + hex.EncodeToString(b)
	require.LessOrEqual(t, len(name), 15)
	path := filepath.Join(t.TempDir(), name)
	src, err := os.Open("/bin/sleep")
	require.NoError(t, err)
	defer src.Close()
	dst, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o755)
	require.NoError(t, err)
	_, err = io.Copy(dst, src)
	require.NoError(t, err)
	require.NoError(t, dst.Close())
	return path, name
}

func sessionOf(t *testing.T, pid int) int {
	st, err := procFS{root: "/proc"}.stat(pid)
	require.NoError(t, err)
	return st.Session
}

func TestRestartByPidfile(t *testing.T) {
	old := startProc(t, "/bin/sleep", "300")
	pidfile := writePidfile(t, t.TempDir(), old.pid)

	res := execute(t, ActionRestart, map[string]any{
		"match":   map[string]any{"pidfile": pidfile},
		"command": []any{"/bin/sleep", "301"},
		"grace":   "5s", "confirm": "300ms",
	})
	require.True(t, res.Success, res.Output)
	newPid := int(res.Metrics["new_pid"])
	killAtCleanup(t, newPid)
	require.NotZero(t, newPid)
	require.NotEqual(t, old.pid, newPid)
	require.Equal(t, float64(old.pid), res.Metrics["old_pid"])
	require.Equal(t, 0.0, res.Metrics["killed"], "sleep ends on SIGTERM")
	require.Eventually(t, func() bool { return !alive(old.pid) }, 5*time.Second, 10*time.Millisecond)
	require.True(t, alive(newPid))
	require.Equal(t, newPid, sessionOf(t, newPid), "the new process leads its own session")
	require.Contains(t, res.Output, fmt.Sprintf(`stopped %d "sleep"; started "/bin/sleep" "301": pid %d, running after 300ms`, old.pid, newPid))
}

func TestRestartWhenNotRunning(t *testing.T) {
	res := execute(t, ActionRestart, map[string]any{
		"match":   map[string]any{"pidfile": filepath.Join(t.TempDir(), "missing.pid")},
		"command": []any{"/bin/sleep", "300"},
		"confirm": "200ms",
	})
	require.True(t, res.Success, res.Output)
	killAtCleanup(t, int(res.Metrics["new_pid"]))
	require.Contains(t, res.Output, "was not running (pidfile")
	require.Contains(t, res.Output, "does not exist")
	require.Equal(t, 0.0, res.Metrics["stopped"])
}

func TestRestartEscalatesToKill(t *testing.T) {
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready")
	// A process that ignores SIGTERM.
	stubborn := startProc(t, "/bin/sh", "-c", "trap '' TERM; touch "+ready+"; while :; do /bin/sleep 1; done")
	require.Eventually(t, func() bool { _, err := os.Stat(ready); return err == nil }, 5*time.Second, 10*time.Millisecond)
	pidfile := writePidfile(t, dir, stubborn.pid)

	start := time.Now()
	res := execute(t, ActionRestart, map[string]any{
		"match":   map[string]any{"pidfile": pidfile},
		"command": []any{"/bin/sleep", "300"},
		"grace":   "300ms", "confirm": "200ms",
	})
	require.True(t, res.Success, res.Output)
	killAtCleanup(t, int(res.Metrics["new_pid"]))
	require.Less(t, time.Since(start), 5*time.Second)
	require.Equal(t, 1.0, res.Metrics["killed"])
	require.Contains(t, res.Output, "(1 needed SIGKILL after 300ms)")
	require.False(t, alive(stubborn.pid))
}

func TestRestartCommandFails(t *testing.T) {
	res := execute(t, ActionRestart, map[string]any{
		"match":   map[string]any{"name": "tend-no-such-process-xyz"},
		"command": []any{"/bin/sh", "-c", "exit 4"},
		"confirm": "2s",
	})
	require.False(t, res.Success)
	require.Contains(t, res.Output, "was not running (no process named")
	require.Contains(t, res.Output, "which ended within")
	require.Contains(t, res.Output, "exit status 4")

	res = execute(t, ActionRestart, map[string]any{
		"match":   map[string]any{"name": "tend-no-such-process-xyz"},
		"command": []any{"/nonexistent/daemon"},
	})
	require.False(t, res.Success)
	require.Contains(t, res.Output, `cannot start "/nonexistent/daemon"`)
}

func TestRestartDaemonizingCommand(t *testing.T) {
	dir := t.TempDir()
	old := startProc(t, "/bin/sleep", "300")
	pidfile := writePidfile(t, dir, old.pid)
	// Like a classic daemon: fork, write the pidfile, and exit 0.
	res := execute(t, ActionRestart, map[string]any{
		"match":   map[string]any{"pidfile": pidfile},
		"command": []any{"/bin/sh", "-c", "/bin/sleep 300 </dev/null >/dev/null 2>&1 & echo $! > " + pidfile},
		"confirm": "500ms",
	})
	require.True(t, res.Success, res.Output)
	newPid := int(res.Metrics["new_pid"])
	killAtCleanup(t, newPid)
	b, err := os.ReadFile(pidfile)
	require.NoError(t, err)
	require.Equal(t, strconv.Itoa(newPid)+"\n", string(b))
	require.True(t, alive(newPid))
	require.Contains(t, res.Output, "exited 0 and left "+strconv.Itoa(newPid)+` "sleep" running after 500ms`)

	// A command that exits 0 and leaves nothing is a failure.
	res = execute(t, ActionRestart, map[string]any{
		"match":   map[string]any{"pidfile": filepath.Join(dir, "never.pid")},
		"command": []any{"/bin/true"},
		"confirm": "300ms",
	})
	require.False(t, res.Success)
	require.Contains(t, res.Output, "which exited 0 (as daemons do) but no new process matching pidfile")
}

func TestKillByName(t *testing.T) {
	bin, name := uniqueBinary(t, "tsl")
	a := startProc(t, bin, "300")
	b := startProc(t, bin, "300")
	other := startProc(t, "/bin/sleep", "300")
	require.Eventually(t, func() bool {
		procs, err := procFS{root: "/proc"}.byName(name)
		return err == nil && len(procs) == 2
	}, 5*time.Second, 10*time.Millisecond)

	res := execute(t, ActionKill, map[string]any{"match": map[string]any{"name": name}, "signal": "KILL"})
	require.True(t, res.Success, res.Output)
	require.Equal(t, 2.0, res.Metrics["signalled"])
	require.Contains(t, res.Output, "sent SIGKILL to 2 process(es)")
	require.Eventually(t, func() bool { return !alive(a.pid) && !alive(b.pid) }, 5*time.Second, 10*time.Millisecond)
	require.True(t, alive(other.pid))

	res = execute(t, ActionKill, map[string]any{"match": map[string]any{"name": name}})
	require.True(t, res.Success, res.Output)
	require.Equal(t, 0.0, res.Metrics["signalled"])
	require.Contains(t, res.Output, "nothing to do: no process named")
}

func TestKillByPidfileWithSignal(t *testing.T) {
	dir := t.TempDir()
	hupped := filepath.Join(dir, "hupped")
	ready := filepath.Join(dir, "ready")
	p := startProc(t, "/bin/sh", "-c", "trap 'touch "+hupped+"' HUP; touch "+ready+"; while :; do /bin/sleep 0.05; done")
	require.Eventually(t, func() bool { _, err := os.Stat(ready); return err == nil }, 5*time.Second, 10*time.Millisecond)
	res := execute(t, ActionKill, map[string]any{"match": map[string]any{"pidfile": writePidfile(t, dir, p.pid)}, "signal": "HUP"})
	require.True(t, res.Success, res.Output)
	require.Equal(t, 1.0, res.Metrics["signalled"])
	require.Eventually(t, func() bool { _, err := os.Stat(hupped); return err == nil }, 5*time.Second, 10*time.Millisecond)
	require.True(t, alive(p.pid), "HUP was handled, not fatal")
}

func TestNeverSignalsProtectedProcesses(t *testing.T) {
	dir := t.TempDir()
	for _, pid := range []int{1, os.Getpid(), os.Getppid()} {
		pidfile := writePidfile(t, dir, pid)
		res := execute(t, ActionKill, map[string]any{"match": map[string]any{"pidfile": pidfile}, "signal": "KILL"})
		require.False(t, res.Success, "pid %d", pid)
		require.Contains(t, res.Output, fmt.Sprintf("names pid %d, which is never signalled", pid))
		res = execute(t, ActionRestart, map[string]any{"match": map[string]any{"pidfile": pidfile}, "command": []any{"/bin/true"}})
		require.False(t, res.Success, "pid %d", pid)
	}
	// By name, the plugin's own process is left alone. (CONT: harmless to
	// any other process that happens to have the same name.)
	self, err := procFS{root: "/proc"}.stat(os.Getpid())
	require.NoError(t, err)
	res := execute(t, ActionKill, map[string]any{"match": map[string]any{"name": self.Comm}, "signal": "CONT"})
	require.True(t, res.Success, res.Output)
	require.Contains(t, res.Output, "left alone protected pid(s) "+strconv.Itoa(os.Getpid()))
}

func TestStaleAndBadPidfiles(t *testing.T) {
	dir := t.TempDir()
	p := startProc(t, "/bin/true")
	require.Eventually(t, func() bool { return !alive(p.pid) }, 5*time.Second, 10*time.Millisecond)
	res := execute(t, ActionKill, map[string]any{"match": map[string]any{"pidfile": writePidfile(t, dir, p.pid)}})
	require.True(t, res.Success, res.Output)
	require.Contains(t, res.Output, "nothing to do: pid "+strconv.Itoa(p.pid)+" from pidfile")

	garbage := filepath.Join(dir, "garbage.pid")
	require.NoError(t, os.WriteFile(garbage, []byte("\x1b[2Jrm -rf /"), 0o644))
	res = execute(t, ActionKill, map[string]any{"match": map[string]any{"pidfile": garbage}})
	require.False(t, res.Success)
	require.Contains(t, res.Output, `does not hold a pid: "\x1b[2Jrm -rf /"`)
}

func TestReusedPidIsNotSignalled(t *testing.T) {
	p := startProc(t, "/bin/sleep", "300")
	st, err := procFS{root: "/proc"}.stat(p.pid)
	require.NoError(t, err)
	pl := New(nil)
	err = pl.signal(proc{Pid: p.pid, StartTime: st.StartTime + 1}, syscall.SIGKILL)
	require.ErrorIs(t, err, errGone)
	require.True(t, alive(p.pid))
}

func TestHostileNamesAreQuoted(t *testing.T) {
	dir := t.TempDir()
	name := "t\x1b[31m\nx"
	bin := filepath.Join(dir, name)
	src, err := os.ReadFile("/bin/sleep")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(bin, src, 0o755))
	p := startProc(t, bin, "300")
	require.Eventually(t, func() bool {
		procs, err := procFS{root: "/proc"}.byName(name)
		return err == nil && len(procs) == 1
	}, 5*time.Second, 10*time.Millisecond)
	// Asking for the name itself is refused: control characters are never
	// a parameter.
	_, err = New(nil).Execute(context.Background(), sdk.ExecuteRequest{TaskID: "t", Action: ActionKill,
		Params: map[string]any{"match": map[string]any{"name": name}, "signal": "KILL"}})
	require.ErrorIs(t, err, sdk.ErrInvalidParams)
	require.ErrorContains(t, err, `param match.name: must not contain control characters (newline, escape, ...), got "t\x1b[31m\nx"`)
	// Found by its pidfile, its name is quoted in the output.
	res := execute(t, ActionKill, map[string]any{"match": map[string]any{"pidfile": writePidfile(t, dir, p.pid)}, "signal": "KILL"})
	require.True(t, res.Success, res.Output)
	require.NotContains(t, res.Output, "\x1b")
	require.NotContains(t, res.Output, "\n")
	require.Contains(t, res.Output, `"t\x1b[31m\nx"`)
}

func TestThroughGRPC(t *testing.T) {
	c := sdk.TestClient(t, New(nil))
	d, err := c.Describe(context.Background())
	require.NoError(t, err)
	require.Equal(t, "process", d.GetName())
	require.Len(t, d.GetActions(), 2)
	err = c.Validate(context.Background(), ActionRestart, map[string]any{"match": map[string]any{"name": "x"}, "command": []any{"x"}})
	require.ErrorIs(t, err, sdk.ErrInvalidParams)
	require.True(t, strings.HasPrefix(err.Error(), "invalid params: param command[0]"), err.Error())
}
