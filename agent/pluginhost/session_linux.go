//go:build linux

package pluginhost

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// killSession SIGKILLs every live process in session sid: the plugin,
// which leads its own session, and whatever it started that stayed in it,
// in any process group (exec.run gives each command its own group). A
// process that started a session of its own on purpose (a daemon started by
// process.restart) is not touched. It never touches the agent's own
// session. It returns how many processes it signalled.
func killSession(sid int) int {
	if sid <= 1 || sid == os.Getpid() {
		return 0
	}
	if own, err := unix.Getsid(0); err == nil && own == sid {
		return 0
	}
	signalled := 0
	for round := 0; round < 10; round++ {
		members := sessionMembers("/proc", sid)
		if len(members) == 0 {
			return signalled
		}
		for _, m := range members {
			if m.pgrp > 1 {
				_ = syscall.Kill(-m.pgrp, syscall.SIGKILL)
			}
			_ = syscall.Kill(m.pid, syscall.SIGKILL)
			signalled++
		}
		time.Sleep(time.Duration(round+1) * 5 * time.Millisecond)
	}
	return signalled
}

type member struct{ pid, pgrp int }

// sessionMembers lists the live (not zombie) processes of session sid.
func sessionMembers(procRoot string, sid int) []member {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []member
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 1 || pid == self {
			continue
		}
		b, err := os.ReadFile(procRoot + "/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		state, pgrp, session, ok := parseStat(b)
		if ok && session == sid && state != 'Z' && state != 'X' {
			out = append(out, member{pid: pid, pgrp: pgrp})
		}
	}
	return out
}

// parseStat reads state, process group and session from /proc/<pid>/stat,
// whose comm field (in parentheses, hostile) ends at the last ')'.
func parseStat(b []byte) (state byte, pgrp, session int, ok bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 4 || len(f[0]) != 1 {
		return 0, 0, 0, false
	}
	pgrp, err1 := strconv.Atoi(f[2])
	session, err2 := strconv.Atoi(f[3])
	return f[0][0], pgrp, session, err1 == nil && err2 == nil
}
