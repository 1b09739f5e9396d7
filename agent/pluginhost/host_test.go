package pluginhost

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/structpb"

	"tend.dev/tend/plugins/sdk"
)

// raceEnabled is set when the tests run under -race; the plugins are then
// built with -race too (which also reuses the packages compiled for the
// test).
var raceEnabled bool

// binDir holds the real plugin binaries, built once by TestMain.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tend-pluginhost-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := 1
	if err := buildPlugins(dir); err != nil {
		fmt.Fprintln(os.Stderr, "building the plugins:", err)
	} else {
		code = m.Run()
	}
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

func buildPlugins(dir string) error {
	build := func(args ...string) error {
		flags := []string{"build"}
		if raceEnabled {
			flags = append(flags, "-race")
		}
		cmd := exec.Command(goTool(), append(flags, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("go %s: %w\n%s", strings.Join(cmd.Args[1:], " "), err, out)
		}
		return nil
	}
	if err := build("-o", dir+"/", "tend.dev/tend/plugins/..."); err != nil {
		return err
	}
	return build("-o", filepath.Join(dir, "tend-plugin-crashtest"), "./testdata/crashplugin")
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newHost returns a host on the built plugins (or on dir), closed at the
// end of the test, and its log, which is printed when the test fails or
// TEND_TEST_SHOW_LOG is set.
func newHost(t *testing.T, dir string) (*Host, *syncBuffer) {
	t.Helper()
	if dir == "" {
		dir = binDir
	}
	cat, err := LoadCatalog(dir)
	require.NoError(t, err)
	logs := &syncBuffer{}
	h := New(cat, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	t.Cleanup(func() {
		h.Close()
		if t.Failed() || os.Getenv("TEND_TEST_SHOW_LOG") != "" {
			t.Logf("host log:\n%s", logs.String())
		}
	})
	return h, logs
}

func params(t *testing.T, m map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	require.NoError(t, err)
	return s
}

// pidOf returns the pid of the running instance of a plugin, or 0.
func pidOf(h *Host, name string) int {
	s := h.slots[name]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inst == nil {
		return 0
	}
	return s.inst.pid
}

// alive reports whether pid is a running, non-zombie process.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	state, _, _, ok := parseStat(b)
	return ok && state != 'Z' && state != 'X'
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	var pid int
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(string(b))
		return err == nil
	}, 10*time.Second, 10*time.Millisecond, "no pid in %s", path)
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	return pid
}

func TestLoadCatalog(t *testing.T) {
	cat, err := LoadCatalog(binDir)
	require.NoError(t, err)
	require.Equal(t, []string{"crashtest", "disk", "exec", "process", "service"}, cat.Names())
	sum, err := hashFile(filepath.Join(binDir, "tend-plugin-exec"))
	require.NoError(t, err)
	require.Equal(t, Entry{Path: filepath.Join(binDir, "tend-plugin-exec"), SHA256: sum}, cat["exec"])

	dir := t.TempDir()
	write := func(name string, mode os.FileMode) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), mode))
		require.NoError(t, os.Chmod(filepath.Join(dir, name), mode))
	}
	write("tend-plugin-good", 0o755)
	write("tend-plugin-noexec", 0o644)
	write("tend-plugin-good.bak", 0o755)
	write("tend-plugin-Upper", 0o755)
	write("other-binary", 0o755)
	require.NoError(t, os.Mkdir(filepath.Join(dir, "tend-plugin-dir"), 0o755))
	require.NoError(t, os.Symlink(filepath.Join(dir, "tend-plugin-good"), filepath.Join(dir, "tend-plugin-link")))
	cat, err = LoadCatalog(dir)
	require.NoError(t, err)
	require.Equal(t, []string{"good", "link"}, cat.Names())
	require.Equal(t, cat["good"].SHA256, cat["link"].SHA256)

	write("tend-plugin-open", 0o757)
	_, err = LoadCatalog(dir)
	require.ErrorContains(t, err, "tend-plugin-open is writable by anyone")

	_, err = LoadCatalog(filepath.Join(dir, "missing"))
	require.ErrorContains(t, err, "no such file or directory")

	cat, err = LoadCatalog(t.TempDir())
	require.NoError(t, err)
	require.Empty(t, cat)
}

func TestExecuteRealPlugins(t *testing.T) {
	h, _ := newHost(t, "")
	ctx := context.Background()

	resp, err := h.Execute(ctx, "exec.run", params(t, map[string]any{"argv": []any{"/bin/echo", "hello from exec"}}), "task-1", 10*time.Second)
	require.NoError(t, err)
	require.True(t, resp.GetSuccess(), resp.GetOutput())
	require.Contains(t, resp.GetOutput(), "hello from exec")
	require.Equal(t, 0.0, resp.GetMetrics()["exit_code"])

	dir := t.TempDir()
	for i := range 3 {
		require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("%d.log", i)), []byte("x"), 0o644))
	}
	resp, err = h.Execute(ctx, "disk.cleanup", params(t, map[string]any{"path": dir, "pattern": "*.log"}), "task-2", 10*time.Second)
	require.NoError(t, err)
	require.True(t, resp.GetSuccess(), resp.GetOutput())
	require.Equal(t, 3.0, resp.GetMetrics()["files_deleted"])

	// On a host without systemd the action says so; with systemd, the
	// unit does not exist. Either way it fails with a clear output.
	resp, err = h.Execute(ctx, "service.restart", params(t, map[string]any{"name": "tend-test-no-such-unit"}), "task-3", 10*time.Second)
	require.NoError(t, err)
	require.False(t, resp.GetSuccess())
	require.Regexp(t, `systemd is not running on this host|not found|cannot reach systemd`, resp.GetOutput())

	d, err := h.Describe("process")
	require.NoError(t, err)
	require.Equal(t, "process", d.GetName())
}

func TestRestartedProcessOutlivesThePlugins(t *testing.T) {
	h, _ := newHost(t, "")
	resp, err := h.Execute(context.Background(), "process.restart", params(t, map[string]any{
		"match":   map[string]any{"pidfile": filepath.Join(t.TempDir(), "none.pid")},
		"command": []any{"/bin/sleep", "300"},
		"confirm": "200ms",
	}), "task-1", 10*time.Second)
	require.NoError(t, err)
	require.True(t, resp.GetSuccess(), resp.GetOutput())
	newPid := int(resp.GetMetrics()["new_pid"])
	t.Cleanup(func() { _ = syscall.Kill(newPid, syscall.SIGKILL) })
	plugin := pidOf(h, "process")
	require.NotZero(t, plugin)

	h.Close()
	require.Eventually(t, func() bool { return !alive(plugin) }, 10*time.Second, 20*time.Millisecond)
	require.True(t, alive(newPid), "a restarted service lives in its own session and survives the plugin")
}

func TestValidate(t *testing.T) {
	h, _ := newHost(t, "")
	ctx := context.Background()

	require.NoError(t, h.Validate(ctx, "disk.cleanup", params(t, map[string]any{"path": "/var/log/app", "olderThan": "24h"})))

	err := h.Validate(ctx, "disk.cleanup", params(t, map[string]any{"path": "var/log", "mode": "shred"}))
	require.ErrorIs(t, err, sdk.ErrInvalidParams)
	require.Equal(t, `disk.cleanup: invalid params: param path: want a clean absolute path (no "..", ".", "//" or trailing "/"), got "var/log"; param mode: want "delete" or "quarantine", got "shred"`, err.Error())

	_, err = h.Execute(ctx, "exec.run", params(t, map[string]any{"argv": []any{"rm", "-rf", "/"}}), "t", time.Second)
	require.ErrorIs(t, err, sdk.ErrInvalidParams)
	require.Contains(t, err.Error(), "param argv[0]: want the program's clean absolute path")

	err = h.Validate(ctx, "disk.shred", params(t, nil))
	require.ErrorIs(t, err, sdk.ErrUnknownAction)
	require.Contains(t, err.Error(), `"disk.shred": plugin disk serves disk.cleanup`)

	err = h.Validate(ctx, "nginx.reload", params(t, nil))
	require.ErrorIs(t, err, ErrNoPlugin)
	require.Equal(t, `no plugin for action "nginx.reload" (catalog: crashtest, disk, exec, process, service)`, err.Error())

	err = h.Validate(ctx, "restart", params(t, nil))
	require.ErrorIs(t, err, sdk.ErrUnknownAction)
	require.Contains(t, err.Error(), "want <plugin>.<action>")

	_, err = h.Execute(ctx, "exec.run", params(t, map[string]any{"argv": []any{"/bin/true"}}), "t", 0)
	require.ErrorContains(t, err, "timeout must be positive")
}

func TestTimeoutKillsTheProcessGroup(t *testing.T) {
	h, _ := newHost(t, "")
	dir := t.TempDir()
	start := time.Now()
	_, err := h.Execute(context.Background(), "crashtest.hang", params(t, map[string]any{"dir": dir}), "task-hang", 2*time.Second)
	require.ErrorIs(t, err, ErrTimeout)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Contains(t, err.Error(), "crashtest.hang did not finish within 2s; killed plugin crashtest")
	require.Less(t, time.Since(start), 15*time.Second)

	same := readPid(t, filepath.Join(dir, "same.pid"))
	group := readPid(t, filepath.Join(dir, "group.pid"))
	daemon := readPid(t, filepath.Join(dir, "daemon.pid"))
	require.Eventually(t, func() bool { return !alive(same) }, 5*time.Second, 20*time.Millisecond, "child in the plugin's group survived")
	require.Eventually(t, func() bool { return !alive(group) }, 5*time.Second, 20*time.Millisecond, "child in its own group survived")
	require.True(t, alive(daemon), "a process that left the session on purpose is not the host's to kill")
	require.Zero(t, pidOf(h, "crashtest"), "the killed plugin is forgotten")

	// The next call starts it again.
	resp, err := h.Execute(context.Background(), "crashtest.echo", params(t, map[string]any{"text": "back"}), "task-2", 10*time.Second)
	require.NoError(t, err)
	require.Equal(t, "back", resp.GetOutput())

	// A cancelled call kills the plugin the same way.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	first := pidOf(h, "crashtest")
	dir2 := t.TempDir()
	t.Cleanup(func() {
		if b, err := os.ReadFile(filepath.Join(dir2, "daemon.pid")); err == nil {
			if pid, err := strconv.Atoi(string(b)); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	_, err = h.Execute(ctx, "crashtest.hang", params(t, map[string]any{"dir": dir2}), "task-3", time.Minute)
	require.ErrorIs(t, err, context.Canceled)
	require.Contains(t, err.Error(), "crashtest.hang: cancelled; killed plugin crashtest")
	require.Eventually(t, func() bool { return !alive(first) }, 5*time.Second, 20*time.Millisecond)
}

func TestCrashedPluginIsRelaunched(t *testing.T) {
	h, _ := newHost(t, "")
	ctx := context.Background()
	echo := func() int {
		t.Helper()
		resp, err := h.Execute(ctx, "crashtest.echo", params(t, map[string]any{"text": "hi"}), "t", 10*time.Second)
		require.NoError(t, err)
		return int(resp.GetMetrics()["pid"])
	}
	first := echo()
	require.Equal(t, first, pidOf(h, "crashtest"))

	for _, how := range []string{"exit", "panic"} {
		before := pidOf(h, "crashtest")
		_, err := h.Execute(ctx, "crashtest.crash", params(t, map[string]any{"how": how}), "t-"+how, 10*time.Second)
		require.ErrorIs(t, err, ErrCrashed, how)
		require.Contains(t, err.Error(), "died while running crashtest.crash")
		require.Eventually(t, func() bool { return !alive(before) }, 5*time.Second, 20*time.Millisecond)
		again := echo()
		require.NotEqual(t, before, again, "relaunched after %s", how)
		require.True(t, alive(again))
	}

	// Killed between calls: the next call notices and starts it again.
	victim := pidOf(h, "crashtest")
	require.NoError(t, syscall.Kill(victim, syscall.SIGKILL))
	s := h.slots["crashtest"]
	require.Eventually(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.inst.client.Exited()
	}, 5*time.Second, 10*time.Millisecond)
	require.NotEqual(t, victim, echo())
}

func TestChangedBinaryIsRefused(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "tend-plugin-exec")
	b, err := os.ReadFile(filepath.Join(binDir, "tend-plugin-exec"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(bin, b, 0o755))
	h, _ := newHost(t, dir)

	// One byte changed after the catalog was loaded.
	changed := bytes.Clone(b)
	changed[len(changed)/2] ^= 0x01
	require.NoError(t, os.WriteFile(bin, changed, 0o755))
	_, err = h.Execute(context.Background(), "exec.run", params(t, map[string]any{"argv": []any{"/bin/true"}}), "t", 10*time.Second)
	require.ErrorIs(t, err, ErrRefused)
	require.ErrorIs(t, err, plugin.ErrChecksumsDoNotMatch)
	require.Contains(t, err.Error(), "it was changed after it was catalogued")
	require.Zero(t, pidOf(h, "exec"))

	// Put back, it runs: the refusal was the checksum's.
	require.NoError(t, os.WriteFile(bin, b, 0o755))
	resp, err := h.Execute(context.Background(), "exec.run", params(t, map[string]any{"argv": []any{"/bin/true"}}), "t", 10*time.Second)
	require.NoError(t, err)
	require.True(t, resp.GetSuccess())
}

func TestImposterIsRefused(t *testing.T) {
	dir := t.TempDir()
	b, err := os.ReadFile(filepath.Join(binDir, "tend-plugin-crashtest"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tend-plugin-exec"), b, 0o755))
	h, _ := newHost(t, dir)
	_, err = h.Execute(context.Background(), "exec.run", params(t, map[string]any{"argv": []any{"/bin/true"}}), "t", 10*time.Second)
	require.ErrorIs(t, err, ErrRefused)
	require.Contains(t, err.Error(), `the binary says it is plugin "crashtest", not exec`)
}

func TestNotAPlugin(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tend-plugin-fake"), []byte("#!/bin/sh\necho hello\n"), 0o755))
	h, _ := newHost(t, dir)
	_, err := h.Execute(context.Background(), "fake.run", params(t, nil), "t", 10*time.Second)
	require.ErrorIs(t, err, ErrRefused)
	require.Contains(t, err.Error(), "cannot start plugin fake")
}

func TestPluginRefusesToRunByHand(t *testing.T) {
	cmd := exec.Command(filepath.Join(binDir, "tend-plugin-exec"))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.True(t, errors.As(err, &ee), "err %v", err)
	require.Equal(t, 1, ee.ExitCode())
	require.Contains(t, string(out), "This binary is a plugin")
}

func TestCloseKillsEveryPlugin(t *testing.T) {
	h, _ := newHost(t, "")
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	for i := range 4 {
		p := params(t, map[string]any{"argv": []any{"/bin/echo", strconv.Itoa(i)}})
		wg.Go(func() {
			resp, err := h.Execute(ctx, "exec.run", p, "t", 10*time.Second)
			if err == nil && !resp.GetSuccess() {
				err = errors.New(resp.GetOutput())
			}
			errs <- err
		})
	}
	p := params(t, map[string]any{"text": "x"})
	wg.Go(func() {
		_, err := h.Execute(ctx, "crashtest.echo", p, "t", 10*time.Second)
		errs <- err
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	pids := []int{pidOf(h, "exec"), pidOf(h, "crashtest")}
	for _, pid := range pids {
		require.NotZero(t, pid)
		require.True(t, alive(pid))
	}
	h.Close()
	for _, pid := range pids {
		require.False(t, alive(pid), "pid %d left behind", pid)
	}
	_, err := h.Execute(ctx, "exec.run", params(t, map[string]any{"argv": []any{"/bin/true"}}), "t", time.Second)
	require.ErrorIs(t, err, ErrClosed)
	h.Close() // twice is fine
}

func TestPluginLogsReachTheAgentLog(t *testing.T) {
	h, logs := newHost(t, "")
	_, err := h.Execute(context.Background(), "crashtest.echo", params(t, map[string]any{"text": "marker-42"}), "task-log", 10*time.Second)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		s := logs.String()
		return strings.Contains(s, "msg=\"echo called\"") && strings.Contains(s, "text=marker-42") && strings.Contains(s, "plugin=crashtest")
	}, 5*time.Second, 20*time.Millisecond, "log:\n%s", logs.String())
}
