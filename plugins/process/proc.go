package process

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"tend.dev/tend/plugins/sdk"
)

// Reading /proc. Everything in it (names, command lines, pidfiles) is
// hostile data: it is parsed defensively, only compared, and quoted in
// output.

const (
	// maxPidfile is the most of a pidfile that is read.
	maxPidfile = 128
	// maxCmdline is the most of /proc/<pid>/cmdline that is read: argv[0]
	// is at its start.
	maxCmdline = 4096
	// maxStat is the most of /proc/<pid>/stat that is read.
	maxStat = 4096
	// pfKthread is PF_KTHREAD in the flags field of /proc/<pid>/stat.
	pfKthread = 0x00200000
)

// procStat is what the plugin needs from /proc/<pid>/stat.
type procStat struct {
	Comm      string
	State     byte
	PPid      int
	Pgrp      int
	Session   int
	Flags     uint64
	StartTime uint64 // clock ticks after boot; with the pid, names a process
}

// gone reports whether the process has exited (zombie or dead).
func (s procStat) gone() bool { return s.State == 'Z' || s.State == 'X' || s.State == 'x' }

// parseStat parses /proc/<pid>/stat. The comm field is in parentheses and
// may itself contain ')' , spaces or newlines, so it ends at the last ')'.
func parseStat(b []byte) (procStat, error) {
	open := bytes.IndexByte(b, '(')
	closing := bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open {
		return procStat{}, errors.New("malformed stat: no (comm)")
	}
	var s procStat
	s.Comm = string(b[open+1 : closing])
	// Fields from 3 (state) on; field n is f[n-3].
	f := strings.Fields(string(b[closing+1:]))
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("malformed stat: %d fields after comm", len(f))
	}
	s.State = f[0][0]
	var err error
	ints := []struct {
		dst *int
		i   int
	}{{&s.PPid, 1}, {&s.Pgrp, 2}, {&s.Session, 3}}
	for _, x := range ints {
		if *x.dst, err = strconv.Atoi(f[x.i]); err != nil {
			return procStat{}, fmt.Errorf("malformed stat: field %d: %w", x.i+3, err)
		}
	}
	if s.Flags, err = strconv.ParseUint(f[6], 10, 64); err != nil {
		return procStat{}, fmt.Errorf("malformed stat: flags: %w", err)
	}
	if s.StartTime, err = strconv.ParseUint(f[19], 10, 64); err != nil {
		return procStat{}, fmt.Errorf("malformed stat: starttime: %w", err)
	}
	return s, nil
}

// parsePid parses a pidfile's content: a positive decimal pid, optionally
// surrounded by white space (daemons write "123\n").
func parsePid(b []byte) (int, error) {
	s := strings.TrimSpace(string(b))
	if s == "" {
		return 0, errors.New("is empty")
	}
	if len(s) > 10 || strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' }) >= 0 {
		return 0, fmt.Errorf("does not hold a pid: %s", quote(s))
	}
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 0 || pid > 1<<22 {
		return 0, fmt.Errorf("does not hold a valid pid: %s", quote(s))
	}
	return pid, nil
}

// argv0Base returns the base name of argv[0] from /proc/<pid>/cmdline.
func argv0Base(cmdline []byte) string {
	if i := bytes.IndexByte(cmdline, 0); i >= 0 {
		cmdline = cmdline[:i]
	}
	if len(cmdline) == 0 {
		return ""
	}
	return filepath.Base(string(cmdline))
}

// procFS reads processes from a /proc tree (a fixture in tests).
type procFS struct{ root string }

func readLimited(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, max))
}

func (p procFS) stat(pid int) (procStat, error) {
	b, err := readLimited(filepath.Join(p.root, strconv.Itoa(pid), "stat"), maxStat)
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

// proc is one process found: pid and start time name it across pid reuse.
type proc struct {
	Pid       int
	StartTime uint64
	Comm      string
}

// byName lists the live user-space processes named name: their comm, or
// the base name of their argv[0], equals it (as the process check
// matches). Kernel threads and zombies never match.
func (p procFS) byName(name string) ([]proc, error) {
	entries, err := os.ReadDir(p.root)
	if err != nil {
		return nil, fmt.Errorf("cannot list processes in %s: %w", p.root, err)
	}
	var out []proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		st, err := p.stat(pid)
		if err != nil || st.gone() || st.Flags&pfKthread != 0 {
			continue
		}
		match := st.Comm == name
		if !match {
			cmdline, err := readLimited(filepath.Join(p.root, e.Name(), "cmdline"), maxCmdline)
			match = err == nil && argv0Base(cmdline) == name
		}
		if match {
			out = append(out, proc{Pid: pid, StartTime: st.StartTime, Comm: st.Comm})
		}
	}
	return out, nil
}

// alive reports whether the process is still the one found and has not
// exited.
func (p procFS) alive(pr proc) bool {
	st, err := p.stat(pr.Pid)
	return err == nil && !st.gone() && st.StartTime == pr.StartTime
}

func quote(s string) string { return sdk.Quote(s, 200) }
