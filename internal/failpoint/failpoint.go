// Package failpoint puts named crash points into the agent and the control
// plane, for the robustness tests (tests/e2e, `make robustness`). It is an
// environment-driven equivalent of etcd's gofail.
//
// A marker is one line at a place where a crash could lose or repeat work:
//
//	failpoint.Inject(failpoint.AgentAfterSeqPersist)
//
// In a normal build every marker is an empty function that the compiler
// inlines away: the production binaries carry no failpoint code at all. Only
// binaries built with the build tag `failpoints` (`make build-failpoints`,
// which writes bin-fp/) read TEND_FAILPOINTS at start and act on it:
//
//	TEND_FAILPOINTS="agentAfterSeqPersist=exit;cpAfterBatchCommit=20*off->exit"
//
// The variable holds `name=terms` pairs separated by `;`. Terms are tried in
// order, separated by `->`, as in gofail: a term with a count is used for
// that many hits, then the next one takes over; a term without a count is
// used for every hit from then on. A term is
//
//	[P%][N*]action[(argument)]
//
// with P the percentage of hits it fires on (default 100: a hit on which it
// does not fire does not use up its count) and N its count. Actions:
//
//	off          do nothing (with a count: let the first N hits pass)
//	print        write "tend-failpoint: NAME: hit" to standard error
//	sleep(D)     sleep for D (a Go duration, or a number of milliseconds)
//	panic[(MSG)] panic
//	exit[(D)]    after D (default 0), kill the process with SIGKILL: no
//	             deferred function, no graceful shutdown, as `kill -9` or the
//	             OOM killer would
//
// Every action but off writes one line "tend-failpoint: NAME: ACTION" to
// standard error before it acts, so that a test can count the faults it
// injected from the process's log.
//
// InjectAsync evaluates its failpoint on a new goroutine, for points that
// must fire while the caller is blocked in a call (mid-execution: the agent
// killed while its plugin runs the action, with exit(300ms)).
package failpoint

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// EnvVar is the environment variable failpoint builds read at start.
const EnvVar = "TEND_FAILPOINTS"

// LogPrefix starts the line written to standard error when a failpoint
// fires.
const LogPrefix = "tend-failpoint: "

// The crash points. Each is marked once in the code, at the place its
// comment names.
const (
	// AgentAfterTaskReceive: the agent has received a task delivery on its
	// stream and not yet looked at it (agent/stream, receive).
	AgentAfterTaskReceive = "agentAfterTaskReceive"
	// AgentAfterSeqPersist: the agent has durably raised its task
	// high-water mark for a verified task, before the allow-list check and
	// before it reports or runs anything (agent/tasks, Runner.handle).
	AgentAfterSeqPersist = "agentAfterSeqPersist"
	// AgentMidExecution: the task is reported running and handed to its
	// plugin (agent/tasks, Runner.execute; use InjectAsync semantics:
	// exit(D) fires D into the execution).
	AgentMidExecution = "agentMidExecution"
	// AgentBeforeTaskReport: a task update read from the agent's outbox is
	// about to be sent on the stream (agent/stream, sendTaskUpdates).
	AgentBeforeTaskReport = "agentBeforeTaskReport"
	// CPAfterTaskPersist: the control plane has created, sequenced, signed
	// and stored a task, in one transaction with its incident and its
	// detected/decided/signed events, before it is sent
	// (controlplane/remediation, dispatch).
	CPAfterTaskPersist = "cpAfterTaskPersist"
	// CPBeforeTaskSend: a stored task is about to be handed to the agent's
	// stream (controlplane/remediation, send; also on a resend after a
	// reconnect).
	CPBeforeTaskSend = "cpBeforeTaskSend"
	// CPAfterBatchCommit: a result batch is durable in the store and not
	// yet acknowledged to the agent nor seen by the remediation loop
	// (controlplane/api, the ingest callback of Stream.handle).
	CPAfterBatchCommit = "cpAfterBatchCommit"
)

// Names lists every crash point.
var Names = []string{
	AgentAfterTaskReceive, AgentAfterSeqPersist, AgentMidExecution, AgentBeforeTaskReport,
	CPAfterTaskPersist, CPBeforeTaskSend, CPAfterBatchCommit,
}

// Action kinds.
const (
	ActionOff   = "off"
	ActionPrint = "print"
	ActionSleep = "sleep"
	ActionPanic = "panic"
	ActionExit  = "exit"
)

// Term is one step of a failpoint's program.
type Term struct {
	// Percent of hits it fires on, 1..100.
	Percent int
	// Count is how many times it fires before the next term takes over;
	// 0: no limit.
	Count int
	// Action is one of the Action constants.
	Action string
	// Delay is sleep's duration, or how long exit waits first.
	Delay time.Duration
	// Message is panic's message.
	Message string
}

func (t Term) String() string {
	var b strings.Builder
	if t.Percent != 100 {
		fmt.Fprintf(&b, "%d%%", t.Percent)
	}
	if t.Count > 0 {
		fmt.Fprintf(&b, "%d*", t.Count)
	}
	b.WriteString(t.Action)
	switch {
	case t.Action == ActionSleep || (t.Action == ActionExit && t.Delay > 0):
		fmt.Fprintf(&b, "(%s)", t.Delay)
	case t.Action == ActionPanic && t.Message != "":
		fmt.Fprintf(&b, "(%s)", t.Message)
	}
	return b.String()
}

// Parse reads a TEND_FAILPOINTS value: `name=terms` pairs separated by `;`
// (empty pairs are ignored). Every name must be one of Names.
func Parse(spec string) (map[string][]Term, error) {
	out := map[string][]Term{}
	known := map[string]bool{}
	for _, n := range Names {
		known[n] = true
	}
	for _, pair := range strings.Split(spec, ";") {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		name, prog, ok := strings.Cut(pair, "=")
		name = strings.TrimSpace(name)
		if !ok || name == "" {
			return nil, fmt.Errorf("%s: %q is not name=terms", EnvVar, pair)
		}
		if !known[name] {
			return nil, fmt.Errorf("%s: unknown failpoint %q (known: %s)", EnvVar, name, strings.Join(Names, ", "))
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("%s: failpoint %s set twice", EnvVar, name)
		}
		var terms []Term
		for _, s := range strings.Split(prog, "->") {
			t, err := parseTerm(strings.TrimSpace(s))
			if err != nil {
				return nil, fmt.Errorf("%s: failpoint %s: %w", EnvVar, name, err)
			}
			terms = append(terms, t)
		}
		out[name] = terms
	}
	return out, nil
}

func parseTerm(s string) (Term, error) {
	t := Term{Percent: 100}
	orig := s
	if i := strings.IndexByte(s, '%'); i >= 0 {
		p, err := strconv.Atoi(s[:i])
		if err != nil || p < 1 || p > 100 {
			return t, fmt.Errorf("term %q: percentage must be 1..100", orig)
		}
		t.Percent, s = p, s[i+1:]
	}
	if i := strings.IndexByte(s, '*'); i >= 0 {
		n, err := strconv.Atoi(s[:i])
		if err != nil || n < 1 {
			return t, fmt.Errorf("term %q: count must be a positive number", orig)
		}
		t.Count, s = n, s[i+1:]
	}
	action, arg, hasArg := s, "", false
	if i := strings.IndexByte(s, '('); i >= 0 {
		if !strings.HasSuffix(s, ")") {
			return t, fmt.Errorf("term %q: missing )", orig)
		}
		action, arg, hasArg = s[:i], s[i+1:len(s)-1], true
	}
	t.Action = action
	switch action {
	case ActionOff, ActionPrint:
		if hasArg {
			return t, fmt.Errorf("term %q: %s takes no argument", orig, action)
		}
	case ActionSleep:
		if !hasArg {
			return t, fmt.Errorf("term %q: sleep needs a duration, e.g. sleep(2s)", orig)
		}
		d, err := parseDelay(arg)
		if err != nil {
			return t, fmt.Errorf("term %q: %w", orig, err)
		}
		t.Delay = d
	case ActionExit:
		if hasArg {
			d, err := parseDelay(arg)
			if err != nil {
				return t, fmt.Errorf("term %q: %w", orig, err)
			}
			t.Delay = d
		}
	case ActionPanic:
		t.Message = arg
	case "":
		return t, fmt.Errorf("term %q: no action", orig)
	default:
		return t, fmt.Errorf("term %q: unknown action %q (off, print, sleep, panic, exit)", orig, action)
	}
	return t, nil
}

// parseDelay reads a Go duration, or a bare number of milliseconds (as
// gofail's sleep(100)).
func parseDelay(s string) (time.Duration, error) {
	if ms, err := strconv.Atoi(s); err == nil && ms >= 0 {
		return time.Duration(ms) * time.Millisecond, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, errors.New("bad duration " + strconv.Quote(s))
	}
	return d, nil
}
