// Package process is the tend-plugin-process action plugin:
// process.restart stops a process and starts its command again, detached;
// process.kill sends a signal.
//
// A process is found by pidfile or by name (its comm, or the base name of
// its argv[0], as the process check matches), never both. Signals go
// through a pidfd (os.FindProcess) after checking the process's start time,
// so a pid reused since it was found is never signalled. Pid 1, the plugin
// itself and its parent (the agent) are never signalled. Commands run
// without a shell, from an absolute path, in a new session (so they outlive
// the plugin and are not killed with its process group), with /dev/null as
// standard input and output, "/" as working directory and PATH as their
// only environment variable.
package process

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"tend.dev/tend/internal/actions"
	"tend.dev/tend/internal/version"
	"tend.dev/tend/plugins/sdk"
	pluginv1 "tend.dev/tend/proto/tend/plugin/v1"
)

// The plugin's actions.
const (
	ActionRestart = "process.restart"
	ActionKill    = "process.kill"
)

const (
	defaultGrace   = actions.DefaultGrace
	maxGrace       = actions.MaxGrace
	defaultConfirm = actions.DefaultConfirm
	// killWait is how long a SIGKILLed process may take to go.
	killWait = 5 * time.Second
	// poll is how often a process is looked at while waiting.
	poll = 20 * time.Millisecond
	// maxListed is the most pids named in the output.
	maxListed = 20
)

// commandEnv is the whole environment of a started command.
var commandEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// signals are the signals process.kill may send, by name.
var signals = actions.Signals

func signalNames() []string { return actions.SignalNames() }

// Plugin implements sdk.Action.
type Plugin struct {
	log  *slog.Logger
	proc procFS
	// protected are pids never signalled besides pid 1: the plugin and
	// its parent, the agent.
	protected []int
}

var _ sdk.Action = (*Plugin)(nil)

// New returns the plugin; log may be nil.
func New(log *slog.Logger) *Plugin {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Plugin{log: log, proc: procFS{root: "/proc"}, protected: []int{os.Getpid(), os.Getppid()}}
}

func (p *Plugin) isProtected(pid int) bool { return pid <= 1 || slices.Contains(p.protected, pid) }

var matchParamInfo = &pluginv1.ParamInfo{Name: "match", Type: "object", Required: true,
	Description: `which process: {"pidfile": "/run/x.pid"} or {"name": "x"} (its comm or the base name of argv[0]), exactly one`}

// Describe lists the actions and their parameters.
func (p *Plugin) Describe(context.Context) (*pluginv1.DescribeResponse, error) {
	return &pluginv1.DescribeResponse{
		Name:    "process",
		Version: version.Version,
		Actions: []*pluginv1.ActionInfo{{
			Name:        "restart",
			Description: "Stop the matched process (SIGTERM, then SIGKILL after the grace period; fine if it is not running), then start the command detached in a new session and check that it is still running after the confirm period (or, if it exits 0 at once, that it left a daemon behind).",
			Params: []*pluginv1.ParamInfo{
				matchParamInfo,
				{Name: "command", Type: "list", Required: true, Description: "argv of the command that starts it again; argv[0] is an absolute path; no shell"},
				{Name: "grace", Type: "string", Description: `how long to wait after SIGTERM before SIGKILL (Go duration, at most 5m), default "10s"`},
				{Name: "confirm", Type: "string", Description: `how long the new process must stay up (Go duration, at most 1m), default "1s"`},
			},
		}, {
			Name:        "kill",
			Description: "Send a signal to the matched process(es); nothing to do if none runs.",
			Params: []*pluginv1.ParamInfo{
				matchParamInfo,
				{Name: "signal", Type: "string", Description: "signal name: " + strings.Join(signalNames(), ", ") + ` (with or without "SIG"), default "TERM"`},
			},
		}},
	}, nil
}

// The params, as internal/actions reads them for the control plane and
// the agent too.
type (
	matchParams   = actions.Match
	restartParams = actions.ProcessRestartParams
	killParams    = actions.ProcessKillParams
)

func parseRestart(m map[string]any) (restartParams, error) { return actions.ParseProcessRestart(m) }

func parseKill(m map[string]any) (killParams, error) { return actions.ParseProcessKill(m) }

func parse(action string, m map[string]any) (any, error) {
	switch action {
	case ActionRestart:
		return parseRestart(m)
	case ActionKill:
		return parseKill(m)
	}
	return nil, sdk.UnknownAction(action, ActionKill, ActionRestart)
}

// Validate checks an action's parameters.
func (p *Plugin) Validate(_ context.Context, action string, params map[string]any) error {
	_, err := parse(action, params)
	return err
}

// Execute runs process.restart or process.kill.
func (p *Plugin) Execute(ctx context.Context, req sdk.ExecuteRequest) (sdk.ExecuteResult, error) {
	parsed, err := parse(req.Action, req.Params)
	if err != nil {
		return sdk.ExecuteResult{}, err
	}
	var res sdk.ExecuteResult
	switch a := parsed.(type) {
	case restartParams:
		res = p.restart(ctx, a)
	case killParams:
		res = p.kill(a)
	}
	p.log.Info("process action", "action", req.Action, "task_id", req.TaskID, "success", res.Success)
	return res, nil
}

// find returns the processes match names. A missing pidfile or a pid that
// is not running is no process (with a note saying so); a pidfile naming a
// protected pid or a kernel thread is an error.
func (p *Plugin) find(m matchParams) (procs []proc, note string, err error) {
	if m.Name != "" {
		all, err := p.proc.byName(m.Name)
		if err != nil {
			return nil, "", err
		}
		var left []string
		for _, pr := range all {
			if p.isProtected(pr.Pid) {
				left = append(left, fmt.Sprint(pr.Pid))
				continue
			}
			procs = append(procs, pr)
		}
		if len(left) > 0 {
			note = fmt.Sprintf("left alone protected pid(s) %s (pid 1, the agent, the plugin)", strings.Join(left, ", "))
		}
		if len(procs) == 0 {
			note = strings.TrimPrefix(note+"; no process named "+quote(m.Name)+" is running", "; ")
		}
		return procs, note, nil
	}
	b, err := readLimited(m.Pidfile, maxPidfile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Sprintf("pidfile %s does not exist, so the process is not running", quote(m.Pidfile)), nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("cannot read pidfile: %w", err)
	}
	pid, err := parsePid(b)
	if err != nil {
		return nil, "", fmt.Errorf("pidfile %s %w", quote(m.Pidfile), err)
	}
	st, err := p.proc.stat(pid)
	if errors.Is(err, fs.ErrNotExist) || err == nil && st.gone() {
		return nil, fmt.Sprintf("pid %d from pidfile %s is not running", pid, quote(m.Pidfile)), nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("cannot read /proc for pid %d from pidfile %s: %w", pid, quote(m.Pidfile), err)
	}
	if p.isProtected(pid) || st.Flags&pfKthread != 0 {
		return nil, "", fmt.Errorf("pidfile %s names pid %d, which is never signalled (pid 1, the agent, the plugin or a kernel thread)", quote(m.Pidfile), pid)
	}
	return []proc{{Pid: pid, StartTime: st.StartTime, Comm: st.Comm}}, "", nil
}

var errGone = errors.New("process is gone")

// signal sends sig to pr if it is still the process that was found.
func (p *Plugin) signal(pr proc, sig syscall.Signal) error {
	// On Linux os.FindProcess holds a pidfd: once the start time has been
	// checked, the signal can only reach this process.
	h, err := os.FindProcess(pr.Pid)
	if err != nil {
		return errGone
	}
	defer h.Release()
	if !p.proc.alive(pr) {
		return errGone
	}
	if err := h.Signal(sig); err != nil {
		if errors.Is(err, os.ErrProcessDone) || errors.Is(err, syscall.ESRCH) {
			return errGone
		}
		return err
	}
	return nil
}

// waitGone waits until none of procs is alive, or d passes, or ctx ends,
// and returns those still alive.
func (p *Plugin) waitGone(ctx context.Context, procs []proc, d time.Duration) []proc {
	deadline := time.Now().Add(d)
	for {
		var alive []proc
		for _, pr := range procs {
			if p.proc.alive(pr) {
				alive = append(alive, pr)
			}
		}
		if len(alive) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return alive
		}
		procs = alive
		select {
		case <-ctx.Done():
		case <-time.After(poll):
		}
	}
}

// stop ends procs: SIGTERM, grace, SIGKILL. It returns how many needed
// SIGKILL and an error if any survived.
func (p *Plugin) stop(ctx context.Context, procs []proc, grace time.Duration) (killed int, err error) {
	for _, pr := range procs {
		if err := p.signal(pr, syscall.SIGTERM); err != nil && !errors.Is(err, errGone) {
			return 0, fmt.Errorf("SIGTERM to pid %d: %w", pr.Pid, err)
		}
	}
	left := p.waitGone(ctx, procs, grace)
	for _, pr := range left {
		if err := p.signal(pr, syscall.SIGKILL); err != nil && !errors.Is(err, errGone) {
			return 0, fmt.Errorf("SIGKILL to pid %d: %w", pr.Pid, err)
		}
		killed++
	}
	if left = p.waitGone(ctx, left, killWait); len(left) > 0 {
		return killed, fmt.Errorf("pid(s) %s still running after SIGKILL", pidList(left))
	}
	return killed, nil
}

func pidList(procs []proc) string {
	var b strings.Builder
	for i, pr := range procs {
		if i == maxListed {
			fmt.Fprintf(&b, " … and %d more", len(procs)-maxListed)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d %s", pr.Pid, quote(pr.Comm))
	}
	return b.String()
}

func (p *Plugin) kill(k killParams) sdk.ExecuteResult {
	procs, note, err := p.find(k.Match)
	if err != nil {
		return sdk.ExecuteResult{Output: "process.kill: " + err.Error()}
	}
	metrics := map[string]float64{"signalled": 0}
	if len(procs) == 0 {
		return sdk.ExecuteResult{Success: true, Output: "nothing to do: " + note, Metrics: metrics}
	}
	var sent, gone []proc
	var problems []string
	for _, pr := range procs {
		switch err := p.signal(pr, k.Signal); {
		case err == nil:
			sent = append(sent, pr)
		case errors.Is(err, errGone):
			gone = append(gone, pr)
		default:
			problems = append(problems, fmt.Sprintf("pid %d: %v", pr.Pid, err))
		}
	}
	metrics["signalled"] = float64(len(sent))
	out := fmt.Sprintf("sent SIG%s to %d process(es)", k.SignalName, len(sent))
	if len(sent) > 0 {
		out += ": " + pidList(sent)
	}
	if len(gone) > 0 {
		out += "; already gone: " + pidList(gone)
	}
	if note != "" {
		out += "; " + note
	}
	if len(problems) > 0 {
		out += "; failed: " + strings.Join(problems, "; ")
	}
	p.log.Info("signalled", "signal", k.SignalName, "pids", len(sent))
	return sdk.ExecuteResult{Success: len(problems) == 0, Output: out, Metrics: metrics}
}

func (p *Plugin) restart(ctx context.Context, r restartParams) sdk.ExecuteResult {
	fail := func(format string, args ...any) sdk.ExecuteResult {
		return sdk.ExecuteResult{Output: "process.restart: " + fmt.Sprintf(format, args...)}
	}
	procs, note, err := p.find(r.Match)
	if err != nil {
		return fail("%v", err)
	}
	metrics := map[string]float64{"stopped": float64(len(procs)), "killed": 0}
	var out strings.Builder
	if len(procs) > 0 {
		killed, err := p.stop(ctx, procs, r.Grace)
		metrics["killed"] = float64(killed)
		if err != nil {
			return fail("stopping %s: %v; not starting another", pidList(procs), err)
		}
		fmt.Fprintf(&out, "stopped %s", pidList(procs))
		if killed > 0 {
			fmt.Fprintf(&out, " (%d needed SIGKILL after %s)", killed, r.Grace)
		}
		if len(procs) == 1 {
			metrics["old_pid"] = float64(procs[0].Pid)
		}
	} else {
		out.WriteString("was not running (" + note + ")")
	}
	if note != "" && len(procs) > 0 {
		out.WriteString("; " + note)
	}
	started, detail, err := p.start(ctx, r, procs)
	if err != nil {
		out.WriteString("; " + err.Error())
		return sdk.ExecuteResult{Output: out.String(), Metrics: metrics}
	}
	if len(started) > 0 {
		metrics["new_pid"] = float64(started[0].Pid)
	}
	fmt.Fprintf(&out, "; started %s: %s", argvString(r.Command), detail)
	return sdk.ExecuteResult{Success: true, Output: out.String(), Metrics: metrics}
}

func argvString(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = sdk.Quote(a, 200)
	}
	return strings.Join(q, " ")
}

// start runs the command detached and confirms that it runs: either it is
// still running after r.Confirm, or it exited 0 at once (it daemonized)
// and a new process matching r.Match runs at the end of r.Confirm.
func (p *Plugin) start(ctx context.Context, r restartParams, old []proc) ([]proc, string, error) {
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return nil, "", fmt.Errorf("cannot start: %w", err)
	}
	defer devnull.Close()
	cmd := exec.Command(r.Command[0], r.Command[1:]...)
	cmd.Env = commandEnv
	cmd.Dir = "/"
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	begin := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("cannot start %s: %w", quote(r.Command[0]), err)
	}
	pid := cmd.Process.Pid
	p.log.Info("started", "argv0", r.Command[0], "pid", pid)
	exited := make(chan error, 1)
	// Reap it if it ends while the plugin lives; otherwise it is
	// reparented when the plugin exits.
	go func() { exited <- cmd.Wait() }()
	deadline := time.NewTimer(r.Confirm)
	defer deadline.Stop()
	select {
	case err := <-exited:
		if err != nil {
			return nil, "", fmt.Errorf("started pid %d, which ended within %s: %v (its output goes to /dev/null; look at its own logs)", pid, time.Since(begin).Round(time.Millisecond), err)
		}
	case <-deadline.C:
		return []proc{{Pid: pid}}, fmt.Sprintf("pid %d, running after %s", pid, r.Confirm), nil
	case <-ctx.Done():
		return nil, "", fmt.Errorf("started pid %d, but the deadline passed before it was confirmed (%v)", pid, context.Cause(ctx))
	}
	// It exited 0 at once: a daemon that forked. Find what it left.
	var found []proc
	for {
		found = p.newProcs(r.Match, old)
		select {
		case <-deadline.C:
			if len(found) == 0 {
				return nil, "", fmt.Errorf("started pid %d, which exited 0 (as daemons do) but no new process matching %s is running after %s", pid, matchString(r.Match), r.Confirm)
			}
			var alive []proc
			for _, pr := range found {
				if p.proc.alive(pr) {
					alive = append(alive, pr)
				}
			}
			if len(alive) == 0 {
				return nil, "", fmt.Errorf("started pid %d, which daemonized into %s, gone again within %s", pid, pidList(found), r.Confirm)
			}
			return alive, fmt.Sprintf("pid %d exited 0 and left %s running after %s", pid, pidList(alive), r.Confirm), nil
		case <-ctx.Done():
			return nil, "", fmt.Errorf("started pid %d, which exited 0; the deadline passed before its daemon was confirmed (%v)", pid, context.Cause(ctx))
		case <-time.After(poll):
		}
	}
}

// newProcs lists the processes matching m that are not in old.
func (p *Plugin) newProcs(m matchParams, old []proc) []proc {
	found, _, err := p.find(m)
	if err != nil {
		return nil
	}
	return slices.DeleteFunc(found, func(pr proc) bool {
		return slices.ContainsFunc(old, func(o proc) bool { return o.Pid == pr.Pid && o.StartTime == pr.StartTime })
	})
}

func matchString(m matchParams) string {
	if m.Name != "" {
		return "name " + quote(m.Name)
	}
	return "pidfile " + quote(m.Pidfile)
}
