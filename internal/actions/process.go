package actions

import (
	"slices"
	"strings"
	"syscall"
	"time"
)

// process.restart and process.kill.

// Limits and defaults of the process actions.
const (
	DefaultGrace   = 10 * time.Second
	MaxGrace       = 5 * time.Minute
	DefaultConfirm = time.Second
	MaxConfirm     = time.Minute
	// MaxProcessName is the longest process name matched (comm is at
	// most 15 bytes, the base name of argv[0] at most a file name).
	MaxProcessName = 255
)

// Signals are the signals process.kill may send, by name without "SIG".
var Signals = map[string]syscall.Signal{
	"TERM": syscall.SIGTERM, "KILL": syscall.SIGKILL, "HUP": syscall.SIGHUP, "INT": syscall.SIGINT,
	"QUIT": syscall.SIGQUIT, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "STOP": syscall.SIGSTOP,
	"CONT": syscall.SIGCONT, "ABRT": syscall.SIGABRT, "WINCH": syscall.SIGWINCH,
}

// SignalNames lists Signals' names, sorted.
func SignalNames() []string {
	names := make([]string, 0, len(Signals))
	for n := range Signals {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Match says which process: exactly one of Pidfile and Name.
type Match struct {
	Pidfile string
	Name    string
}

// ProcessRestartParams are process.restart's params.
type ProcessRestartParams struct {
	Match   Match
	Command []string
	Grace   time.Duration
	Confirm time.Duration
}

// ProcessKillParams are process.kill's params.
type ProcessKillParams struct {
	Match      Match
	Signal     syscall.Signal
	SignalName string
}

func parseMatch(p *Params) Match {
	m := p.Object("match")
	var mp Match
	if !m.Present() {
		return mp
	}
	hasName, hasPidfile := m.Has("name"), m.Has("pidfile")
	switch {
	case hasName && hasPidfile:
		p.Problem("match", "set exactly one of name or pidfile, not both")
	case !hasName && !hasPidfile:
		p.Problem("match", "set exactly one of name or pidfile")
	case hasPidfile:
		mp.Pidfile = m.Path("pidfile")
		m.NoShellMeta("pidfile", mp.Pidfile)
	default:
		mp.Name = m.String("name")
		switch {
		case mp.Name == "" || controlChar(mp.Name) >= 0: // already a problem
		case strings.ContainsAny(mp.Name, "/ \t") || len(mp.Name) > MaxProcessName:
			m.Problem("name", "want a bare program name (no '/', no spaces, at most %d bytes) as in /proc/<pid>/comm or the base name of argv[0], got %s", MaxProcessName, Quote(mp.Name, 200))
			mp.Name = ""
		case strings.HasPrefix(mp.Name, "-"):
			m.Problem("name", "must not start with '-', got %s", Quote(mp.Name, 200))
			mp.Name = ""
		default:
			m.NoShellMeta("name", mp.Name)
		}
	}
	return mp
}

// ParseProcessRestart reads process.restart's params.
func ParseProcessRestart(m map[string]any) (ProcessRestartParams, error) {
	p := NewParams(m)
	r := parseProcessRestart(p)
	return r, p.Err()
}

func parseProcessRestart(p *Params) ProcessRestartParams {
	r := ProcessRestartParams{
		Match:   parseMatch(p),
		Command: p.Argv("command"),
		Grace:   p.OptDuration("grace", DefaultGrace),
		Confirm: p.OptDuration("confirm", DefaultConfirm),
	}
	if r.Grace > MaxGrace {
		p.Problem("grace", "at most %s, got %s", MaxGrace, r.Grace)
	}
	if r.Confirm > MaxConfirm {
		p.Problem("confirm", "at most %s, got %s", MaxConfirm, r.Confirm)
	}
	return r
}

// ParseProcessKill reads process.kill's params.
func ParseProcessKill(m map[string]any) (ProcessKillParams, error) {
	p := NewParams(m)
	k := parseProcessKill(p)
	return k, p.Err()
}

func parseProcessKill(p *Params) ProcessKillParams {
	k := ProcessKillParams{Match: parseMatch(p)}
	name := p.OptString("signal", "TERM")
	k.SignalName = strings.TrimPrefix(name, "SIG")
	sig, ok := Signals[k.SignalName]
	if !ok {
		p.Problem("signal", "want one of %s, got %s", strings.Join(SignalNames(), ", "), Quote(name, 200))
	}
	k.Signal = sig
	return k
}
