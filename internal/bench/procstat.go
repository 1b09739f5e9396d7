package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is USER_HZ, the unit of utime and stime in /proc/PID/stat: 100
// on every Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// ProcSample is one reading of a process from /proc.
type ProcSample struct {
	At time.Time
	// CPU is user + system time of the process itself.
	CPU time.Duration
	// ChildCPU is the user + system time of its children that it waited
	// for (e.g. the commands an agent's checks run).
	ChildCPU time.Duration
	// RSS is the resident set size (VmRSS), HWM its peak (VmHWM), RSSAnon
	// its anonymous part (heap and stacks; the rest maps files, such as
	// bbolt's database).
	RSS, HWM, RSSAnon uint64
	Threads           int
}

// ReadProc reads /proc/PID/stat and /proc/PID/status.
func ReadProc(pid int) (ProcSample, error) {
	s := ProcSample{At: time.Now()}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// The command name is in parentheses and may contain spaces: the
	// fields that follow start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return s, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime is field 14, stime 15, cutime 16,
	// cstime 17.
	if len(f) < 15 {
		return s, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	tick := func(k int) time.Duration {
		v, _ := strconv.ParseInt(f[k-3], 10, 64)
		return time.Duration(v) * clockTick
	}
	s.CPU = tick(14) + tick(15)
	s.ChildCPU = tick(16) + tick(17)

	st, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	defer st.Close()
	sc := bufio.NewScanner(st)
	for sc.Scan() {
		line := sc.Text()
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		n, _ := strconv.ParseUint(fields[0], 10, 64)
		switch k {
		case "VmRSS":
			s.RSS = n << 10
		case "VmHWM":
			s.HWM = n << 10
		case "RssAnon":
			s.RSSAnon = n << 10
		case "Threads":
			s.Threads = int(n)
		}
	}
	return s, sc.Err()
}

// childPIDs lists the processes whose parent is pid.
func childPIDs(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, p)
		}
	}
	return out
}

// RaiseFileLimit raises this process's open-file limit (soft, and hard if
// allowed: CAP_SYS_RESOURCE) to at least n; children such as the control
// plane inherit it. Each simulated agent holds one socket, and so does the
// control plane for each agent. It returns the soft limit in effect.
func RaiseFileLimit(n uint64) (uint64, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, err
	}
	if l.Cur >= n {
		return l.Cur, nil
	}
	want := l
	want.Cur = n
	if want.Max < n {
		want.Max = n
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		// Not root: as far as the hard limit goes.
		want.Cur, want.Max = l.Max, l.Max
		if err2 := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err2 != nil {
			return l.Cur, err
		}
		return l.Max, fmt.Errorf("open files limited to %d per process (the hard limit; raising it needs CAP_SYS_RESOURCE, e.g. ulimit -Hn in a privileged shell or the container's nofile ulimit): %w", l.Max, err)
	}
	return n, nil
}

// pressureTotal reads the "some" stall total (µs) of /proc/pressure/KIND
// (cpu, io, memory): the time during which at least one task waited for
// that resource. ok is false where PSI is not available.
func pressureTotal(kind string) (time.Duration, bool) {
	b, err := os.ReadFile("/proc/pressure/" + kind)
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "some ") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "total="); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				return time.Duration(n) * time.Microsecond, err == nil
			}
		}
	}
	return 0, false
}

// pressure is the share of a window during which some task of the machine
// waited for the CPU and for I/O: how busy the machine was besides.
type pressure struct{ cpu, io time.Duration }

func readPressure() pressure {
	c, _ := pressureTotal("cpu")
	i, _ := pressureTotal("io")
	return pressure{c, i}
}

// loadAverage is the 1-minute load average.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
