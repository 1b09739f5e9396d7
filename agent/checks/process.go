package checks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// The process check: is a process running, found by name or by pidfile.
//
// By name, a process matches when its comm (/proc/<pid>/stat, the same as
// /proc/<pid>/comm) or the base name of its argv[0] (/proc/<pid>/cmdline)
// equals the name. By pidfile, the pid in the file must be a live process.
// Zombies never count as running. Everything read from /proc is hostile
// data: it is only compared, never interpreted, and quoted in output.

func init() { Register("process", newProcessCheck) }

const (
	defaultProcRoot = "/proc"
	// maxPidfile is the most of a pidfile that is read.
	maxPidfile = 128
	// maxCmdline is the most of /proc/<pid>/cmdline that is read: argv[0]
	// is at its start.
	maxCmdline = 4096
	// maxListedPids is the most pids named in the output.
	maxListedPids = 20
)

type processCheck struct {
	procRoot string
	name     string
	pidfile  string
}

func newProcessCheck(spec *agentv1.CheckSpec) (Checker, error) {
	p := spec.GetProcess()
	name, pidfile := p.GetName(), p.GetPidfile()
	switch {
	case name == "" && pidfile == "":
		return nil, errors.New("process check: set exactly one of name or pidfile; neither is set")
	case name != "" && pidfile != "":
		return nil, fmt.Errorf("process check: set exactly one of name or pidfile, not both (name %s, pidfile %s)", quote(name), quote(pidfile))
	case name != "":
		if strings.ContainsAny(name, "/\x00") || len(name) > 255 {
			return nil, fmt.Errorf("process check: name %s must be a bare program name (no '/', no NUL, at most 255 bytes), as in /proc/<pid>/comm or the base name of argv[0]", quote(name))
		}
	default:
		if !filepath.IsAbs(pidfile) || strings.ContainsRune(pidfile, 0) {
			return nil, fmt.Errorf("process check: pidfile %s must be an absolute path", quote(pidfile))
		}
		pidfile = filepath.Clean(pidfile)
	}
	return &processCheck{procRoot: defaultProcRoot, name: name, pidfile: pidfile}, nil
}

func (c *processCheck) Check(ctx context.Context) Result {
	if c.pidfile != "" {
		return c.checkPidfile()
	}
	return c.checkName(ctx)
}

func (c *processCheck) checkName(ctx context.Context) Result {
	pids, zombies, err := c.findByName(ctx)
	if err != nil {
		return result(statusUnknown, nil, "cannot list processes to look for %s: %v", quote(c.name), err)
	}
	metrics := map[string]float64{"pids": float64(len(pids))}
	if len(pids) == 0 {
		extra := ""
		if zombies > 0 {
			extra = fmt.Sprintf(" (%d zombie process(es) with that name do not count)", zombies)
		}
		return result(statusCritical, metrics, "no process named %s is running%s", quote(c.name), extra)
	}
	return result(statusOK, metrics, "process %s is running: %s", quote(c.name), pidList(pids))
}

// findByName scans procRoot for live processes called c.name.
func (c *processCheck) findByName(ctx context.Context) (pids []int, zombies int, err error) {
	entries, err := os.ReadDir(c.procRoot)
	if err != nil {
		return nil, 0, err
	}
	buf := make([]byte, maxCmdline) // reused for every file read
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		st, err := c.readStatBuf(pid, buf)
		if err != nil {
			continue // it exited while we looked, or is not readable
		}
		match := st.Comm == c.name
		// A kernel thread's cmdline is empty: no need to read it.
		if !match && !st.Kernel {
			cmdline, err := readUntil(filepath.Join(c.procRoot, e.Name(), "cmdline"), buf, hasNUL)
			match = err == nil && argv0Base(cmdline) == c.name
		}
		switch {
		case !match:
		case st.dead():
			zombies++
		default:
			pids = append(pids, pid)
		}
	}
	return pids, zombies, nil
}

func (c *processCheck) checkPidfile() Result {
	none := map[string]float64{"pids": 0}
	b, err := readCapped(c.pidfile, maxPidfile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return result(statusCritical, none, "pidfile %s does not exist: the process is not running (or writes its pidfile elsewhere)", quote(c.pidfile))
	case err != nil:
		return result(statusUnknown, nil, "cannot read pidfile %s: %v", quote(c.pidfile), err)
	}
	pid, err := parsePid(b)
	if err != nil {
		return result(statusCritical, none, "pidfile %s does not hold a pid: %v", quote(c.pidfile), err)
	}
	st, err := c.readStat(pid)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return result(statusCritical, none, "stale pidfile %s: process %d is not running", quote(c.pidfile), pid)
	case err != nil:
		return result(statusUnknown, nil, "cannot read the state of process %d from pidfile %s: %v", pid, quote(c.pidfile), err)
	case st.dead():
		return result(statusCritical, none, "process %d (%s) from pidfile %s is a zombie: it has exited and its parent has not reaped it", pid, quote(st.Comm), quote(c.pidfile))
	}
	return result(statusOK, map[string]float64{"pids": 1}, "process %d (%s) from pidfile %s is running", pid, quote(st.Comm), quote(c.pidfile))
}

func (c *processCheck) readStat(pid int) (procStat, error) {
	return c.readStatBuf(pid, make([]byte, maxCmdline))
}

// readStatBuf is readStat reading into buf.
func (c *processCheck) readStatBuf(pid int, buf []byte) (procStat, error) {
	b, err := readUntil(filepath.Join(c.procRoot, strconv.Itoa(pid), "stat"), buf, endsWithNewline)
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(b)
}

// procStat is the part of /proc/<pid>/stat the check needs.
type procStat struct {
	Pid   int
	Comm  string
	State byte
	PPid  int
	// Kernel: a kernel thread (PF_KTHREAD in the flags field).
	Kernel bool
}

// pfKthread is PF_KTHREAD, the kernel-thread bit of /proc/<pid>/stat's
// flags (include/linux/sched.h).
const pfKthread = 0x00200000

// dead says whether the process has exited: a zombie (Z) or dead (X/x).
func (s procStat) dead() bool { return s.State == 'Z' || s.State == 'X' || s.State == 'x' }

// parseProcStat parses /proc/<pid>/stat: "pid (comm) state ppid ...".
// comm may contain anything, including spaces and ')', so it runs from the
// first '(' to the last ')'.
func parseProcStat(b []byte) (procStat, error) {
	open := bytes.IndexByte(b, '(')
	end := bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return procStat{}, errors.New("malformed stat: no (comm)")
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:open])))
	if err != nil || pid <= 0 {
		return procStat{}, fmt.Errorf("malformed stat: bad pid %s", quote(string(b[:open])))
	}
	rest := bytes.Fields(b[end+1:])
	if len(rest) < 2 || len(rest[0]) != 1 {
		return procStat{}, errors.New("malformed stat: no state after comm")
	}
	ppid, err := strconv.Atoi(string(rest[1]))
	if err != nil || ppid < 0 {
		return procStat{}, fmt.Errorf("malformed stat: bad ppid %s", quote(string(rest[1])))
	}
	st := procStat{Pid: pid, Comm: string(b[open+1 : end]), State: rest[0][0], PPid: ppid}
	// Field 9, flags: PF_KTHREAD marks a kernel thread.
	if len(rest) > 6 {
		if flags, err := strconv.ParseUint(string(rest[6]), 10, 64); err == nil {
			st.Kernel = flags&pfKthread != 0
		}
	}
	return st, nil
}

// argv0Base returns the base name of argv[0] from /proc/<pid>/cmdline
// (NUL-separated arguments), or "" for an empty cmdline (kernel threads,
// zombies).
func argv0Base(cmdline []byte) string {
	if i := bytes.IndexByte(cmdline, 0); i >= 0 {
		cmdline = cmdline[:i]
	}
	if len(cmdline) == 0 {
		return ""
	}
	return filepath.Base(string(cmdline))
}

// parsePid parses a pidfile's content: a positive decimal pid on the first
// line, surrounding white space allowed.
func parsePid(b []byte) (int, error) {
	line := b
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		line = b[:i]
	}
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return 0, errors.New("it is empty")
	}
	pid, err := strconv.ParseInt(string(line), 10, 32)
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("content %s is not a positive pid", quote(string(line)))
	}
	return int(pid), nil
}

// readUntil reads a file into buf until done says what was read is
// enough, the end of the file, or buf is full, and returns what it read.
// The process check reads two /proc files per process on every run: this
// costs three system calls per file (open, read, close), where os.ReadFile
// or io.ReadAll on an os.File take five or six (fstat, and a read until
// EOF). /proc/<pid>/stat ends with a newline; of /proc/<pid>/cmdline only
// argv[0], up to its NUL, is needed.
func readUntil(path string, buf []byte, done func([]byte) bool) ([]byte, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	n := 0
	for n < len(buf) {
		m, err := syscall.Read(fd, buf[n:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if m <= 0 {
			break
		}
		n += m
		if done(buf[:n]) {
			break
		}
	}
	return buf[:n], nil
}

func endsWithNewline(b []byte) bool { return len(b) > 0 && b[len(b)-1] == '\n' }

func hasNUL(b []byte) bool { return bytes.IndexByte(b, 0) >= 0 }

// readCapped reads at most max bytes of a file.
func readCapped(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, max))
}

// pidList renders pids for output, naming at most maxListedPids of them.
func pidList(pids []int) string {
	var b strings.Builder
	if len(pids) == 1 {
		b.WriteString("pid ")
	} else {
		fmt.Fprintf(&b, "%d processes, pids ", len(pids))
	}
	for i, pid := range pids {
		if i == maxListedPids {
			fmt.Fprintf(&b, " and %d more", len(pids)-i)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Itoa(pid))
	}
	return b.String()
}
