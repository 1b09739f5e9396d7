package checks

import (
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

func TestParseProcStat(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    procStat
		wantErr bool
	}{
		{"plain", "1234 (nginx) S 1 1234 1234 0 -1 4194560 183 0 0 0", procStat{Pid: 1234, Comm: "nginx", State: 'S', PPid: 1}, false},
		{"zombie", "77 (sleep) Z 12 77 12 0 -1 4227084 0 0", procStat{Pid: 77, Comm: "sleep", State: 'Z', PPid: 12}, false},
		{"spaces and parens in comm", "9 (a) b (c) R 2 9 9", procStat{Pid: 9, Comm: "a) b (c", State: 'R', PPid: 2}, false},
		{"newline and escape in comm", "10 (x\n\x1b[2J) S 3 10", procStat{Pid: 10, Comm: "x\n\x1b[2J", State: 'S', PPid: 3}, false},
		{"empty comm", "11 () I 2 0", procStat{Pid: 11, Comm: "", State: 'I', PPid: 2}, false},
		{"kernel thread (PF_KTHREAD)", "3 (pool_workqueue_release) S 2 0 0 0 -1 2129984 0 0", procStat{Pid: 3, Comm: "pool_workqueue_release", State: 'S', PPid: 2, Kernel: true}, false},
		{"bad flags are ignored", "3 (k) S 2 0 0 0 -1 lots 0 0", procStat{Pid: 3, Comm: "k", State: 'S', PPid: 2}, false},
		{"trailing newline", "12 (bash) S 1 12\n", procStat{Pid: 12, Comm: "bash", State: 'S', PPid: 1}, false},
		{"empty", "", procStat{}, true},
		{"no parens", "12 bash S 1", procStat{}, true},
		{"close before open", "12 )bash( S 1", procStat{}, true},
		{"no state", "12 (bash)", procStat{}, true},
		{"long state", "12 (bash) SS 1", procStat{}, true},
		{"bad pid", "x (bash) S 1", procStat{}, true},
		{"zero pid", "0 (bash) S 1", procStat{}, true},
		{"bad ppid", "12 (bash) S -4", procStat{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseProcStat([]byte(tt.in))
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestArgv0Base(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/usr/sbin/nginx\x00-c\x00/etc/nginx.conf\x00", "nginx"},
		{"nginx\x00", "nginx"},
		{"./bin/app\x00--x\x00", "app"},
		{"/usr/bin/python3\x00/opt/app.py\x00", "python3"},
		{"", ""},
		{"\x00", ""},
		{"nginx: master process /usr/sbin/nginx", "nginx"}, // a rewritten title: the base of the whole string
	}
	for _, tt := range tests {
		t.Run(strconv.Quote(tt.in), func(t *testing.T) {
			require.Equal(t, tt.want, argv0Base([]byte(tt.in)))
		})
	}
}

func TestParsePid(t *testing.T) {
	tests := []struct {
		in      string
		want    int
		wantErr string
	}{
		{"1234\n", 1234, ""},
		{"  42  ", 42, ""},
		{"7\nextra line\n", 7, ""},
		{"", 0, "empty"},
		{"\n\n", 0, "empty"},
		{"-5", 0, "not a positive pid"},
		{"0", 0, "not a positive pid"},
		{"12abc", 0, "not a positive pid"},
		{"99999999999", 0, "not a positive pid"},
		{"\x1b[31m", 0, `"\x1b[31m"`},
	}
	for _, tt := range tests {
		t.Run(strconv.Quote(tt.in), func(t *testing.T) {
			got, err := parsePid([]byte(tt.in))
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func FuzzParseProcStat(f *testing.F) {
	f.Add([]byte("1234 (nginx) S 1 1234 1234 0 -1"))
	f.Add([]byte("9 (a) b (c) R 2 9 9"))
	f.Add([]byte("(("))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseProcStat(b)
		if err == nil {
			require.Positive(t, st.Pid)
			require.GreaterOrEqual(t, st.PPid, 0)
		}
	})
}

func FuzzParsePid(f *testing.F) {
	f.Add([]byte("1234\n"))
	f.Add([]byte(" -1 "))
	f.Fuzz(func(t *testing.T, b []byte) {
		pid, err := parsePid(b)
		if err == nil {
			require.Positive(t, pid)
		}
	})
}

func TestProcessFactoryValidation(t *testing.T) {
	tests := []struct {
		name, pname, pidfile, wantErr string
	}{
		{"neither", "", "", "neither is set"},
		{"both", "nginx", "/run/nginx.pid", "not both"},
		{"slash in name", "sbin/nginx", "", "bare program name"},
		{"relative pidfile", "", "run/nginx.pid", "absolute path"},
		{"ok name", "nginx", "", ""},
		{"ok pidfile", "", "/run/nginx.pid", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(processSpec(tt.pname, tt.pidfile))
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
			require.ErrorContains(t, err, `check "t/process"`)
		})
	}
}

// TestProcessFakeProc runs the name matching over a fixture /proc tree.
func TestProcessFakeProc(t *testing.T) {
	root := t.TempDir()
	procs := []struct {
		pid           int
		stat, cmdline string
	}{
		{100, "100 (nginx) S 1 100 100 0", "/usr/sbin/nginx\x00-g\x00daemon off;\x00"},
		{101, "101 (nginx) S 100 100 100 0", "nginx: worker process"},
		{102, "102 (nginx) Z 100 100 100 0", ""},
		{103, "103 (python3) S 1 103 103 0", "/usr/local/bin/myapp\x00--serve\x00"},
		{104, "104 (a-very-long-nam) S 1 104 104 0", "/opt/a-very-long-name-daemon\x00"},
		{105, "105 (evil\x1b[2J) S 1 105 105 0", "evil\x1b[2J\x00"},
		{106, "garbage", ""},
	}
	for _, p := range procs {
		dir := filepath.Join(root, strconv.Itoa(p.pid))
		require.NoError(t, os.MkdirAll(dir, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "stat"), []byte(p.stat), 0o644))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "cmdline"), []byte(p.cmdline), 0o644))
	}
	require.NoError(t, os.MkdirAll(filepath.Join(root, "self"), 0o755))

	tests := []struct {
		name       string
		status     agentv1.CheckStatus
		pids       float64
		wantOutput string
	}{
		{"nginx", statusOK, 2, "2 processes, pids 100, 101"},
		{"myapp", statusOK, 1, "pid 103"},
		{"python3", statusOK, 1, "pid 103"},
		{"a-very-long-name-daemon", statusOK, 1, "pid 104"},
		{"evil\x1b[2J", statusOK, 1, `"evil\x1b[2J"`},
		{"postgres", statusCritical, 0, `no process named "postgres" is running`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustNew(t, processSpec(tt.name, "")).(*processCheck)
			c.procRoot = root
			res := run(t, c, time.Second)
			require.Equal(t, tt.status, res.Status, res.Output)
			require.Equal(t, tt.pids, res.Metrics["pids"])
			require.Contains(t, res.Output, tt.wantOutput)
			require.NotContains(t, res.Output, "\x1b", "host data must be escaped")
		})
	}

	// Only zombies left: say so.
	c := mustNew(t, processSpec("nginx", "")).(*processCheck)
	c.procRoot = root
	require.NoError(t, os.WriteFile(filepath.Join(root, "100", "stat"), []byte("100 (nginx) Z 1 100"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(root, "101", "stat"), []byte("101 (nginx) X 1 100"), 0o644))
	res := run(t, c, time.Second)
	require.Equal(t, statusCritical, res.Status)
	require.Contains(t, res.Output, "3 zombie")
}

// startNamed starts "sleep 30" under a unique name (through a symlink, so
// its comm is that name) and kills it at cleanup.
func startNamed(t *testing.T) (*exec.Cmd, string) {
	t.Helper()
	sleep := lookPath(t, "sleep")
	name := fmt.Sprintf("tndtest%06d", rand.IntN(1e6))
	link := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.Symlink(sleep, link))
	cmd := exec.Command(link, "30")
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd, name
}

func TestProcessByNameReal(t *testing.T) {
	cmd, name := startNamed(t)
	c := mustNew(t, processSpec(name, ""))

	res := run(t, c, 2*time.Second)
	require.Equal(t, statusOK, res.Status, res.Output)
	require.Equal(t, float64(1), res.Metrics["pids"])
	require.Contains(t, res.Output, "pid "+strconv.Itoa(cmd.Process.Pid))

	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	res = run(t, c, 2*time.Second)
	require.Equal(t, statusCritical, res.Status, res.Output)
	require.Equal(t, float64(0), res.Metrics["pids"])
	require.Contains(t, res.Output, "no process named")
}

func TestProcessByPidfileReal(t *testing.T) {
	cmd, name := startNamed(t)
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "app.pid")
	require.NoError(t, os.WriteFile(pidfile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644))
	c := mustNew(t, processSpec("", pidfile))

	res := run(t, c, 2*time.Second)
	require.Equal(t, statusOK, res.Status, res.Output)
	require.Equal(t, float64(1), res.Metrics["pids"])
	require.Contains(t, res.Output, fmt.Sprintf("process %d (%q)", cmd.Process.Pid, name))

	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	res = run(t, c, 2*time.Second)
	require.Equal(t, statusCritical, res.Status, res.Output)
	require.Contains(t, res.Output, "stale pidfile")

	tests := []struct {
		name, content, want string
	}{
		{"garbage", "not a pid\n", "does not hold a pid"},
		{"empty", "", "it is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.NoError(t, os.WriteFile(pidfile, []byte(tt.content), 0o644))
			res := run(t, c, 2*time.Second)
			require.Equal(t, statusCritical, res.Status, res.Output)
			require.Contains(t, res.Output, tt.want)
		})
	}

	require.NoError(t, os.Remove(pidfile))
	res = run(t, c, 2*time.Second)
	require.Equal(t, statusCritical, res.Status, res.Output)
	require.Contains(t, res.Output, "does not exist")
}

func TestProcessZombieReal(t *testing.T) {
	cmd, name := startNamed(t)
	pid := cmd.Process.Pid
	// Kill it without reaping it: it stays a zombie until the cleanup's Wait.
	require.NoError(t, cmd.Process.Signal(os.Kill))
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
		if err != nil {
			return false
		}
		st, err := parseProcStat(b)
		return err == nil && st.State == 'Z'
	}, 5*time.Second, 10*time.Millisecond)

	res := run(t, mustNew(t, processSpec(name, "")), 2*time.Second)
	require.Equal(t, statusCritical, res.Status, res.Output)
	require.Contains(t, res.Output, "zombie")

	pidfile := filepath.Join(t.TempDir(), "z.pid")
	require.NoError(t, os.WriteFile(pidfile, []byte(strconv.Itoa(pid)), 0o644))
	res = run(t, mustNew(t, processSpec("", pidfile)), 2*time.Second)
	require.Equal(t, statusCritical, res.Status, res.Output)
	require.Contains(t, res.Output, "is a zombie")
}

func TestReadUntil(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	require.NoError(t, os.WriteFile(path, []byte("/usr/bin/x\x00--flag\x00"), 0o600))
	got, err := readUntil(path, make([]byte, 64), hasNUL)
	require.NoError(t, err)
	require.Equal(t, "x", argv0Base(got))
	got, err = readUntil(path, make([]byte, 4), endsWithNewline)
	require.NoError(t, err)
	require.Equal(t, "/usr", string(got), "stops when the buffer is full")
	got, err = readUntil(path, make([]byte, 64), endsWithNewline)
	require.NoError(t, err)
	require.Equal(t, "/usr/bin/x\x00--flag\x00", string(got), "reads to the end")
	_, err = readUntil(filepath.Join(dir, "missing"), make([]byte, 8), hasNUL)
	require.ErrorIs(t, err, fs.ErrNotExist)
	// The real thing: this process's own stat.
	st, err := (&processCheck{procRoot: "/proc"}).readStat(os.Getpid())
	require.NoError(t, err)
	require.Equal(t, os.Getpid(), st.Pid)
	require.False(t, st.Kernel)
}
