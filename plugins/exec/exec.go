// Package exec is the tend-plugin-exec action plugin: exec.run runs an
// allow-listed command line, never through a shell.
//
// The command runs with its own process group, an empty standard input,
// "/" as its working directory and a minimal environment (PATH only).
// When the task's deadline passes, the whole group is killed (SIGKILL);
// when the command exits, whatever it left running in its group is killed
// too, so that exec.run never leaves processes behind (a program that
// starts a daemon in a new session on purpose is not touched). Standard
// output and error are captured together; the result keeps their start
// and end within the 4 KiB output limit.
package exec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	osexec "os/exec"
	"strings"
	"syscall"
	"time"

	"tend.dev/tend/internal/actions"
	"tend.dev/tend/internal/version"
	"tend.dev/tend/plugins/sdk"
	pluginv1 "tend.dev/tend/proto/tend/plugin/v1"
)

// ActionRun is the plugin's one action.
const ActionRun = "exec.run"

// commandEnv is the whole environment of a command.
var commandEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// waitDelay is how long the output is still read after the command's
// group was killed, in case a process outside it holds the pipe.
const waitDelay = 2 * time.Second

// Plugin implements sdk.Action.
type Plugin struct {
	log *slog.Logger
}

var _ sdk.Action = (*Plugin)(nil)

// New returns the plugin; log may be nil.
func New(log *slog.Logger) *Plugin {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Plugin{log: log}
}

// Describe lists exec.run and its parameter.
func (p *Plugin) Describe(context.Context) (*pluginv1.DescribeResponse, error) {
	return &pluginv1.DescribeResponse{
		Name:    "exec",
		Version: version.Version,
		Actions: []*pluginv1.ActionInfo{{
			Name:        "run",
			Description: "Run a command without a shell in its own process group; success when it exits 0. The group is killed at the task's deadline.",
			Params: []*pluginv1.ParamInfo{
				{Name: "argv", Type: "list", Required: true, Description: "the command line; argv[0] is an absolute path"},
			},
		}},
	}, nil
}

// runParams are exec.run's parameters, as internal/actions reads them for
// the control plane and the agent too.
type runParams = actions.ExecRunParams

func parseRun(action string, m map[string]any) (runParams, error) {
	if action != ActionRun {
		return runParams{}, sdk.UnknownAction(action, ActionRun)
	}
	return actions.ParseExecRun(m)
}

// Validate checks exec.run's parameters.
func (p *Plugin) Validate(_ context.Context, action string, params map[string]any) error {
	_, err := parseRun(action, params)
	return err
}

// Execute runs the command until it exits or ctx ends.
func (p *Plugin) Execute(ctx context.Context, req sdk.ExecuteRequest) (sdk.ExecuteResult, error) {
	r, err := parseRun(req.Action, req.Params)
	if err != nil {
		return sdk.ExecuteResult{}, err
	}
	return run(ctx, p.log, r.Argv), nil
}

func run(ctx context.Context, log *slog.Logger, argv []string) sdk.ExecuteResult {
	name := sdk.Quote(argv[0], 200)
	// One pipe of our own for both outputs, so that the command's exit can
	// be handled (its group killed) before the output is collected.
	r, w, err := os.Pipe()
	if err != nil {
		return sdk.ExecuteResult{Output: fmt.Sprintf("cannot start %s: %v", name, err)}
	}
	defer r.Close()
	cmd := osexec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = commandEnv
	cmd.Dir = "/"
	cmd.Stdout = w
	cmd.Stderr = w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }

	start := time.Now()
	err = cmd.Start()
	_ = w.Close()
	if err != nil {
		return sdk.ExecuteResult{Output: fmt.Sprintf("cannot start %s: %v", name, err)}
	}
	pid := cmd.Process.Pid
	log.Info("command started", "argv0", argv[0], "pid", pid)
	out := newHeadTail(1024, sdk.MaxOutput-1024-256)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(out, r)
	}()
	werr := cmd.Wait()
	// Whatever the command left in its group goes with it.
	_ = killGroup(pid)
	heldOpen := false
	select {
	case <-copied:
	case <-time.After(waitDelay):
		// Something outside the group (a daemon it started) still holds
		// the output open: stop reading.
		heldOpen = true
		_ = r.Close()
		<-copied
	}
	took := time.Since(start).Round(time.Millisecond)

	code := cmd.ProcessState.ExitCode()
	metrics := map[string]float64{"exit_code": float64(code), "duration_seconds": took.Seconds()}
	var head string
	switch {
	case ctx.Err() != nil:
		metrics["timed_out"] = 1
		head = fmt.Sprintf("%s did not finish before the deadline (%v after %s); killed its process group %d", name, context.Cause(ctx), took, pid)
	case code == 0:
		head = fmt.Sprintf("%s exited 0 in %s", name, took)
	case code > 0:
		head = fmt.Sprintf("%s exited %d in %s", name, code, took)
	default:
		head = fmt.Sprintf("%s ended in %s: %v", name, took, werr)
	}
	if heldOpen {
		head += "; a process outside its group kept its output open, which was no longer read"
	}
	success := ctx.Err() == nil && code == 0
	log.Info("command finished", "argv0", argv[0], "pid", pid, "exit_code", code, "success", success)
	output := head
	if s := out.String(); s != "" {
		output += "\n" + s
	}
	return sdk.ExecuteResult{Success: success, Output: output, Metrics: metrics}
}

// killGroup kills process group pgid.
func killGroup(pgid int) error {
	if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

// headTail keeps the first head and the last tail bytes written to it.
type headTail struct {
	headMax, tailMax int
	head             []byte
	tail             []byte // ring, in order
	dropped          int64
}

func newHeadTail(head, tail int) *headTail { return &headTail{headMax: head, tailMax: tail} }

func (h *headTail) Write(b []byte) (int, error) {
	n := len(b)
	if room := h.headMax - len(h.head); room > 0 {
		take := min(room, len(b))
		h.head = append(h.head, b[:take]...)
		b = b[take:]
	}
	if len(b) == 0 {
		return n, nil
	}
	h.tail = append(h.tail, b...)
	if over := len(h.tail) - h.tailMax; over > 0 {
		h.dropped += int64(over)
		h.tail = append(h.tail[:0], h.tail[over:]...)
	}
	return n, nil
}

// String is the head, a note of what was left out, and the tail.
func (h *headTail) String() string {
	var sb strings.Builder
	sb.Write(h.head)
	if h.dropped > 0 {
		fmt.Fprintf(&sb, "\n…[%d bytes left out]…\n", h.dropped)
	}
	sb.Write(h.tail)
	return sb.String()
}
