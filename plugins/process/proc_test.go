package process

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// statLine builds a /proc/<pid>/stat line.
func statLine(pid int, comm string, state byte, flags uint64, start uint64) string {
	return strconv.Itoa(pid) + " (" + comm + ") " + string(state) + " 1 " + strconv.Itoa(pid) + " " + strconv.Itoa(pid) +
		" 0 -1 " + strconv.FormatUint(flags, 10) + " 0 0 0 0 0 0 0 0 20 0 1 0 " + strconv.FormatUint(start, 10) + " 1000 10 18446744073709551615\n"
}

func TestParseStat(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want procStat
		err  string
	}{
		{name: "plain", in: statLine(42, "nginx", 'S', 0x400100, 777),
			want: procStat{Comm: "nginx", State: 'S', PPid: 1, Pgrp: 42, Session: 42, Flags: 0x400100, StartTime: 777}},
		{name: "hostile comm", in: statLine(7, "x) R 1 2 3 (y", 'Z', 0, 5),
			want: procStat{Comm: "x) R 1 2 3 (y", State: 'Z', PPid: 1, Pgrp: 7, Session: 7, StartTime: 5}},
		{name: "newline in comm", in: statLine(8, "a\nb", 'R', 0, 9),
			want: procStat{Comm: "a\nb", State: 'R', PPid: 1, Pgrp: 8, Session: 8, StartTime: 9}},
		{name: "empty", in: "", err: "no (comm)"},
		{name: "no paren", in: "1 nginx S 1 1 1", err: "no (comm)"},
		{name: "short", in: "1 (nginx) S 1 1 1", err: "fields after comm"},
		{name: "bad pid field", in: "1 (x) S a 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 1 1", err: "field 4"},
		{name: "bad starttime", in: "1 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 -5 1 1", err: "starttime"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat([]byte(tt.in))
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestParseStatOfThisProcess(t *testing.T) {
	b, err := os.ReadFile("/proc/self/stat")
	require.NoError(t, err)
	st, err := parseStat(b)
	require.NoError(t, err)
	require.Equal(t, os.Getppid(), st.PPid)
	require.NotZero(t, st.StartTime)
	require.False(t, st.gone())
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte(statLine(1, "init", 'S', 0, 1)))
	f.Add([]byte("1 (a) b) S"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseStat(b)
		if err == nil && len(st.Comm) > len(b) {
			t.Fatalf("comm longer than input")
		}
	})
}

func TestParsePid(t *testing.T) {
	tests := []struct {
		in   string
		want int
		err  string
	}{
		{in: "123\n", want: 123},
		{in: "  77  ", want: 77},
		{in: "", err: "is empty"},
		{in: "\n", err: "is empty"},
		{in: "0", err: "does not hold a valid pid"},
		{in: "-5", err: "does not hold a pid"},
		{in: "12 34", err: "does not hold a pid"},
		{in: "0x10", err: "does not hold a pid"},
		{in: "99999999999", err: "does not hold a pid"},
		{in: "9999999", err: "does not hold a valid pid"},
		{in: "1\x1b[31m", err: `does not hold a pid: "1\x1b[31m"`},
	}
	for _, tt := range tests {
		got, err := parsePid([]byte(tt.in))
		if tt.err != "" {
			require.ErrorContains(t, err, tt.err, "input %q", tt.in)
			continue
		}
		require.NoError(t, err, "input %q", tt.in)
		require.Equal(t, tt.want, got)
	}
}

func FuzzParsePid(f *testing.F) {
	f.Add([]byte("123\n"))
	f.Add([]byte("-1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pid, err := parsePid(b)
		if err == nil && (pid <= 0 || pid > 1<<22) {
			t.Fatalf("accepted pid %d", pid)
		}
	})
}

func TestArgv0Base(t *testing.T) {
	require.Equal(t, "nginx", argv0Base([]byte("/usr/sbin/nginx\x00-c\x00/etc/nginx.conf\x00")))
	require.Equal(t, "nginx", argv0Base([]byte("nginx: master process /usr/sbin/nginx\x00")))
	require.Equal(t, "sleep", argv0Base([]byte("sleep")))
	require.Equal(t, "", argv0Base(nil))
	require.Equal(t, "", argv0Base([]byte("\x00x")))
}

// fixture writes a fake /proc: pid → stat line and cmdline.
func fixture(t *testing.T, procs map[int][2]string) procFS {
	root := t.TempDir()
	for pid, files := range procs {
		dir := filepath.Join(root, strconv.Itoa(pid))
		require.NoError(t, os.MkdirAll(dir, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "stat"), []byte(files[0]), 0o644))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "cmdline"), []byte(files[1]), 0o644))
	}
	require.NoError(t, os.MkdirAll(filepath.Join(root, "self"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "uptime"), []byte("1 1\n"), 0o644))
	return procFS{root: root}
}

func TestByName(t *testing.T) {
	fs := fixture(t, map[int][2]string{
		10: {statLine(10, "nginx", 'S', 0, 100), "nginx: master process /usr/sbin/nginx\x00"},
		11: {statLine(11, "nginx", 'S', 0, 101), "nginx: worker process\x00"},
		12: {statLine(12, "nginx", 'Z', 0, 102), ""},                                          // zombie
		13: {statLine(13, "nginx", 'I', pfKthread, 103), ""},                                  // kernel thread
		14: {statLine(14, "php-fpm7.4-work", 'S', 0, 104), "/usr/sbin/php-fpm7.4-worker\x00"}, // comm cut at 15
		15: {statLine(15, "python3", 'S', 0, 105), "/usr/bin/python3\x00/opt/app.py\x00"},
		16: {statLine(16, "x) S 1 (nginx", 'S', 0, 106), "/tmp/evil\x00"}, // tries to look like nginx
		17: {"garbage", "/usr/sbin/nginx\x00"},
	})
	pids := func(name string) []int {
		procs, err := fs.byName(name)
		require.NoError(t, err)
		var out []int
		for _, p := range procs {
			out = append(out, p.Pid)
		}
		return out
	}
	require.ElementsMatch(t, []int{10, 11}, pids("nginx"))
	require.ElementsMatch(t, []int{14}, pids("php-fpm7.4-worker"), "by argv[0] when comm is cut")
	require.ElementsMatch(t, []int{14}, pids("php-fpm7.4-work"), "by comm")
	require.ElementsMatch(t, []int{15}, pids("python3"))
	require.Empty(t, pids("app.py"), "only argv[0]")
	require.Empty(t, pids("evil)"))
	require.ElementsMatch(t, []int{16}, pids("x) S 1 (nginx"))

	require.True(t, fs.alive(proc{Pid: 10, StartTime: 100}))
	require.False(t, fs.alive(proc{Pid: 10, StartTime: 99}), "pid reused")
	require.False(t, fs.alive(proc{Pid: 12, StartTime: 102}), "zombie")
	require.False(t, fs.alive(proc{Pid: 99, StartTime: 1}), "gone")

	_, err := procFS{root: filepath.Join(t.TempDir(), "nope")}.byName("x")
	require.ErrorContains(t, err, "cannot list processes")
}
