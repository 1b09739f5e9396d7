package checks

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// The command check: run a program (never through a shell) and map its
// exit code as Nagios plugins do: 0 OK, 1 WARNING, 2 CRITICAL, anything
// else (3, a signal, failing to start) UNKNOWN.
//
// The program runs in its own process group. When the run times out the
// whole group is killed with SIGKILL and the result is UNKNOWN "timed out
// after X"; when the program exits, whatever it left behind in its group is
// killed too, so a check never leaves processes running. A descendant that
// escapes the group and keeps stdout open cannot hang the check: after the
// program exits, output is waited for at most commandWaitDelay. Standard
// input is /dev/null; stdout and stderr are combined and only the first
// MaxOutput bytes are kept.

func init() { Register("command", newCommandCheck) }

// commandWaitDelay is how long to wait for the output pipes to close after
// the program exited or was killed.
const commandWaitDelay = 500 * time.Millisecond

type commandCheck struct {
	path string // resolved argv[0]
	argv []string
}

func newCommandCheck(spec *agentv1.CheckSpec) (Checker, error) {
	argv := spec.GetCommand().GetArgv()
	if len(argv) == 0 || argv[0] == "" {
		return nil, errors.New("command check: argv is empty; give the program and its arguments, e.g. [\"/usr/lib/nagios/plugins/check_load\", \"-w\", \"5\"]")
	}
	for i, a := range argv {
		if strings.ContainsRune(a, 0) {
			return nil, fmt.Errorf("command check: argv[%d] %s contains a NUL byte", i, quote(a))
		}
	}
	path := argv[0]
	switch {
	case filepath.IsAbs(path):
		path = filepath.Clean(path)
	case strings.ContainsRune(path, '/'):
		return nil, fmt.Errorf("command check: argv[0] %s is a relative path; use an absolute path or a bare name found in PATH", quote(path))
	default:
		p, err := exec.LookPath(path)
		if err != nil || !filepath.IsAbs(p) {
			return nil, fmt.Errorf("command check: argv[0] %s is not an absolute path and was not found in PATH: %v", quote(path), err)
		}
		path = p
	}
	return &commandCheck{path: path, argv: append([]string(nil), argv...)}, nil
}

func (c *commandCheck) Check(ctx context.Context) Result {
	out := newCappedBuffer(MaxOutput - 64) // room for the note on what was dropped
	cmd := exec.CommandContext(ctx, c.path)
	cmd.Args = c.argv
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return killGroup(cmd) }
	cmd.WaitDelay = commandWaitDelay

	start := time.Now()
	if err := cmd.Start(); err != nil {
		return result(statusUnknown, nil, "cannot run %s: %v", quote(c.path), err)
	}
	err := cmd.Wait()
	took := time.Since(start)
	// Whatever the program left in its group (a background child, a
	// grandchild holding the pipe) goes with it.
	_ = killGroup(cmd)

	text := commandOutput(out)
	metrics := map[string]float64{"duration_seconds": took.Seconds()}
	if ctxErr := ctx.Err(); ctxErr != nil {
		if errors.Is(ctxErr, context.DeadlineExceeded) {
			return result(statusUnknown, metrics, "%s timed out after %v and was killed%s", quote(c.path), timeoutOf(ctx, start), withOutput(text))
		}
		return result(statusUnknown, metrics, "%s was killed: the check was cancelled%s", quote(c.path), withOutput(text))
	}

	state := cmd.ProcessState
	if state == nil {
		return result(statusUnknown, metrics, "running %s failed: %v%s", quote(c.path), err, withOutput(text))
	}
	if ws, ok := state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return result(statusUnknown, metrics, "%s was killed by signal %v%s", quote(c.path), ws.Signal(), withOutput(text))
	}
	code := state.ExitCode()
	metrics["exit_code"] = float64(code)
	status := nagiosStatus(code)
	if text == "" {
		text = fmt.Sprintf("%s exited with status %d", quote(c.path), code)
	}
	if status == statusUnknown && code != 3 {
		text = fmt.Sprintf("%s exited with status %d, which is not a Nagios code (0-3)\n%s", quote(c.path), code, text)
	}
	return result(status, metrics, "%s", text)
}

// nagiosStatus maps a Nagios plugin's exit code to a status.
func nagiosStatus(code int) agentv1.CheckStatus {
	switch code {
	case 0:
		return statusOK
	case 1:
		return statusWarning
	case 2:
		return statusCritical
	}
	return statusUnknown
}

// killGroup SIGKILLs the command's process group (its pgid is its pid, from
// Setpgid). A group that is already gone is not an error.
func killGroup(cmd *exec.Cmd) error {
	if cmd.Process == nil || cmd.Process.Pid <= 0 {
		return nil
	}
	err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// commandOutput renders the captured output as valid UTF-8, marking a cut.
func commandOutput(out *cappedBuffer) string {
	b, dropped := out.Bytes()
	s := strings.TrimRight(cleanText(b), "\n")
	if dropped > 0 {
		s += fmt.Sprintf("\n…[%d more bytes of output dropped]", dropped)
	}
	return s
}

func withOutput(s string) string {
	if s == "" {
		return ""
	}
	return "\n" + s
}
