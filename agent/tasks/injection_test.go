package tasks

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/agent/checks"
	"tend.dev/tend/agent/config"
	"tend.dev/tend/agent/state"
	"tend.dev/tend/internal/task"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
	pluginv1 "tend.dev/tend/proto/tend/plugin/v1"
	taskv1 "tend.dev/tend/proto/tend/task/v1"

	"tend.dev/tend/plugins/disk"
	plugexec "tend.dev/tend/plugins/exec"
	"tend.dev/tend/plugins/process"
	"tend.dev/tend/plugins/sdk"
	"tend.dev/tend/plugins/service"
)

// inProcess runs the real plugins in this process: everything the agent
// does to a task (envelope, checks, high-water mark, allow-list, schema,
// the plugin's Validate and Execute) but the go-plugin transport.
type inProcess map[string]sdk.Action

func (e inProcess) plugin(action string) (sdk.Action, error) {
	name, _, _ := strings.Cut(action, ".")
	p, ok := e[name]
	if !ok {
		return nil, fmt.Errorf("no plugin for %s", action)
	}
	return p, nil
}

func (e inProcess) Validate(ctx context.Context, action string, params *structpb.Struct) error {
	p, err := e.plugin(action)
	if err != nil {
		return err
	}
	return p.Validate(ctx, action, params.AsMap())
}

func (e inProcess) Execute(ctx context.Context, action string, params *structpb.Struct, taskID string, timeout time.Duration) (*pluginv1.ExecuteResponse, error) {
	p, err := e.plugin(action)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := p.Execute(ctx, sdk.ExecuteRequest{TaskID: taskID, Action: action, Params: params.AsMap(), Timeout: timeout})
	if err != nil {
		return nil, err
	}
	return sdk.CleanResponse(&pluginv1.ExecuteResponse{Success: res.Success, Output: res.Output, Metrics: res.Metrics}), nil
}

// canary is a program that leaves a mark if it ever runs, reachable both by
// its absolute path and, through PATH, by its bare name.
type canary struct {
	path, name, marker string
}

func newCanary(t *testing.T) canary {
	t.Helper()
	dir := t.TempDir()
	c := canary{path: filepath.Join(dir, "tendcanary"), name: "tendcanary", marker: filepath.Join(t.TempDir(), "canary-ran")}
	require.NoError(t, os.WriteFile(c.path, []byte("#!/bin/sh\necho \"$0 $*\" >> '"+c.marker+"'\n"), 0o755))
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return c
}

// ran fails the test if the canary ever ran.
func (c canary) ran(t *testing.T, after string) {
	t.Helper()
	b, err := os.ReadFile(c.marker)
	if err == nil {
		t.Fatalf("the canary ran (after %s): %s", after, b)
	}
	require.ErrorIs(t, err, os.ErrNotExist)
}

// payloads are the injection corpus: every way a shell, a command line or
// an option parser could be made to run the canary.
func (c canary) payloads() []string {
	var out []string
	for _, prog := range []string{c.path, c.name} {
		out = append(out,
			";"+prog, "x;"+prog, "x; "+prog+" #", "x\n"+prog, "\n"+prog, "x\r\n"+prog,
			"$("+prog+")", "x$("+prog+")y", "`"+prog+"`", "x|"+prog, "x&&"+prog, "x||"+prog, "x>"+prog,
			"-"+prog, "--exec="+prog, "-oProxyCommand="+prog, "x\x00"+prog, "\x1b]0;"+prog+"\x07",
		)
	}
	return out
}

func hasControl(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0
}

// hostileProc starts a copy of /bin/sleep whose file name (and so comm) is
// name and whose argv[0] is argv0, writes its pid to a pidfile and returns
// the pid and the pidfile. It is killed at cleanup.
func hostileProc(t *testing.T, name, argv0 string) (int, string) {
	t.Helper()
	src, err := os.ReadFile("/bin/sleep")
	require.NoError(t, err)
	dir := t.TempDir()
	bin := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(bin, src, 0o755))
	cmd := &exec.Cmd{Path: bin, Args: []string{argv0, "300"}, SysProcAttr: &syscall.SysProcAttr{Setpgid: true}}
	require.NoError(t, cmd.Start())
	pid := cmd.Process.Pid
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = syscall.Kill(-pid, syscall.SIGKILL); <-done })
	pidfile := filepath.Join(dir, "hostile.pid")
	require.NoError(t, os.WriteFile(pidfile, []byte(strconv.Itoa(pid)+"\n"), 0o644))
	// Wait until it runs the copied binary (comm is set by the exec).
	require.Eventually(t, func() bool {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		return err == nil && strings.TrimSuffix(string(b), "\n") == name[:min(len(name), 15)]
	}, waitFor, tick)
	return pid, pidfile
}

func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z'
}

// TestInjectionCorpus: parameters carrying ';', newlines, $(...),
// backticks, pipes, leading '-' and NUL — in exec.run's argv,
// process.restart's command and match, process.kill's match,
// disk.cleanup's path and pattern and service.restart's name — and hosts
// whose process and file names are crafted the same way. Every task goes
// through the agent's whole path with the real plugins (in process) and is
// either rejected with a reason naming what was wrong, or handled
// literally; the canary program, reachable by absolute path and through
// PATH, never runs. (tests/e2e has the same corpus against the real
// binaries.)
func TestInjectionCorpus(t *testing.T) {
	c := newCanary(t)
	payloads := c.payloads()
	cleanDir := t.TempDir()
	deadPidfile := filepath.Join(t.TempDir(), "dead.pid") // no process: restart just starts

	// Hostile hosts: a process whose comm and argv[0] are injections, but
	// whose argv[0] base name is the benign allowed one.
	hostileComm := "w$(" + c.name + ")" // 14 bytes: all of it is the comm
	hostileArgv0 := "/tmp/$(" + c.path + ")\n`" + c.path + "`;" + c.path + "/tend-inj-worker"
	pid1, _ := hostileProc(t, hostileComm, hostileArgv0)
	pid2, pidfile2 := hostileProc(t, "n\x1b[31m\nx`"+c.name, "n")
	for _, name := range []string{"$(" + c.name + ").log", "`" + c.name + "`;x.log", "a\nb.log", "-rf.log", "x\x1b[2J.log"} {
		require.NoError(t, os.WriteFile(filepath.Join(cleanDir, name), []byte("x"), 0o644))
	}
	require.NoError(t, os.WriteFile(filepath.Join(cleanDir, "keep.txt"), []byte("x"), 0o644))

	// The host allows the hostile argvs exactly (to show that they run
	// literally), but only those without control characters: agent.yaml
	// refuses the others.
	literal := [][]string{{"/bin/echo", "x"}}
	for _, p := range payloads {
		if !hasControl(p) {
			literal = append(literal, []string{"/bin/echo", p})
		}
	}
	allow, err := NewAllowList(map[string]config.ActionRule{
		"exec.run":        {Commands: literal},
		"process.restart": {Commands: literal, Pidfiles: []string{deadPidfile}, Names: []string{"tend-inj-worker"}},
		"process.kill":    {Pidfiles: []string{pidfile2}, Names: []string{"tend-inj-worker"}},
		"disk.cleanup":    {Paths: []string{cleanDir}},
		"service.restart": {Units: []string{"nginx.service"}},
	})
	require.NoError(t, err)
	_, err = NewAllowList(map[string]config.ActionRule{"exec.run": {Commands: [][]string{{"/bin/echo", "x\n" + c.path}}}})
	require.ErrorContains(t, err, "control character", "agent.yaml refuses control characters")

	key := newKey(t)
	db, err := state.Open(filepath.Join(t.TempDir(), "agent.db"), state.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	r := New(Config{
		DB: db, AgentID: agentID, Allow: allow,
		Keys: func() map[string]ed25519.PublicKey { return map[string]ed25519.PublicKey{key.ID: key.Pub} },
		Exec: inProcess{"exec": plugexec.New(nil), "process": process.New(nil), "disk": disk.New(nil), "service": service.New(nil)},
	})
	r.Start()
	t.Cleanup(r.Stop)

	type outcome int
	const (
		rejected  outcome = iota // refused, with a reason
		literally                // run, with the payload as plain data
	)
	type tcase struct {
		what   string
		action string
		params map[string]any
		want   outcome
		check  func(t *testing.T, u *agentv1.TaskUpdate)
	}
	var cases []tcase
	for _, p := range payloads {
		q := strconv.Quote(p)
		if !hasControl(p) {
			cases = append(cases,
				tcase{"exec.run argv[1] " + q, "exec.run", map[string]any{"argv": []any{"/bin/echo", p}}, literally,
					func(t *testing.T, u *agentv1.TaskUpdate) {
						require.Equal(t, agentv1.TaskState_TASK_STATE_SUCCEEDED, u.GetState(), u.GetReason())
						require.Contains(t, u.GetOutput(), "\n"+p+"\n", "echo printed the argument as it was")
					}},
				tcase{"process.restart command[1] " + q, "process.restart",
					map[string]any{"match": map[string]any{"pidfile": deadPidfile}, "command": []any{"/bin/echo", p}, "confirm": "10ms"}, literally,
					func(t *testing.T, u *agentv1.TaskUpdate) {
						// echo exits 0 at once and leaves no daemon: the
						// restart fails, having run the argument literally.
						require.Equal(t, agentv1.TaskState_TASK_STATE_FAILED, u.GetState(), u.GetOutput())
						require.Contains(t, u.GetOutput(), "exited 0")
					}})
		} else {
			cases = append(cases, tcase{"exec.run argv[1] " + q, "exec.run", map[string]any{"argv": []any{"/bin/echo", p}}, rejected, nil})
		}
		cases = append(cases,
			tcase{"exec.run argv[0] " + q, "exec.run", map[string]any{"argv": []any{p}}, rejected, nil},
			tcase{"process.restart match.name " + q, "process.restart", map[string]any{"match": map[string]any{"name": p}, "command": []any{"/bin/echo", "x"}}, rejected, nil},
			tcase{"process.restart match.pidfile " + q, "process.restart", map[string]any{"match": map[string]any{"pidfile": deadPidfile + p}, "command": []any{"/bin/echo", "x"}}, rejected, nil},
			tcase{"process.kill match.name " + q, "process.kill", map[string]any{"match": map[string]any{"name": p}}, rejected, nil},
			tcase{"disk.cleanup path " + q, "disk.cleanup", map[string]any{"path": cleanDir + "/" + p}, rejected, nil},
			tcase{"disk.cleanup path " + q + " (bare)", "disk.cleanup", map[string]any{"path": p}, rejected, nil},
			tcase{"disk.cleanup pattern " + q, "disk.cleanup", map[string]any{"path": cleanDir, "pattern": p}, rejected, nil},
			tcase{"service.restart name " + q, "service.restart", map[string]any{"name": p}, rejected, nil},
		)
	}
	// Hostile host data, handled literally.
	cases = append(cases,
		tcase{"disk.cleanup of hostile file names", "disk.cleanup", map[string]any{"path": cleanDir, "pattern": "*.log"}, literally,
			func(t *testing.T, u *agentv1.TaskUpdate) {
				require.Equal(t, agentv1.TaskState_TASK_STATE_SUCCEEDED, u.GetState(), u.GetOutput())
				require.Equal(t, 5.0, u.GetMetrics()["files_deleted"])
				out := u.GetOutput()
				require.Contains(t, out, strconv.Quote("a\nb.log"), "a newline in a file name is quoted")
				require.Contains(t, out, strconv.Quote("$("+c.name+").log"))
				require.NotContains(t, out, "a\nb.log")
				require.NotContains(t, out, "\x1b")
				entries, err := os.ReadDir(cleanDir)
				require.NoError(t, err)
				require.Len(t, entries, 1, "only keep.txt is left")
			}},
		tcase{"process.kill by name of a process with a hostile comm and argv[0]", "process.kill",
			map[string]any{"match": map[string]any{"name": "tend-inj-worker"}, "signal": "KILL"}, literally,
			func(t *testing.T, u *agentv1.TaskUpdate) {
				require.Equal(t, agentv1.TaskState_TASK_STATE_SUCCEEDED, u.GetState(), u.GetOutput())
				require.Contains(t, u.GetOutput(), fmt.Sprintf("%d %s", pid1, strconv.Quote(hostileComm)))
				require.Eventually(t, func() bool { return !alive(pid1) }, waitFor, tick)
			}},
		tcase{"process.kill by pidfile of a process with escapes in its comm", "process.kill",
			map[string]any{"match": map[string]any{"pidfile": pidfile2}, "signal": "KILL"}, literally,
			func(t *testing.T, u *agentv1.TaskUpdate) {
				require.Equal(t, agentv1.TaskState_TASK_STATE_SUCCEEDED, u.GetState(), u.GetOutput())
				require.NotContains(t, u.GetOutput(), "\x1b")
				require.NotContains(t, u.GetOutput(), "\n")
				require.Contains(t, u.GetOutput(), `"n\x1b[31m\nx`+"`")
				require.Eventually(t, func() bool { return !alive(pid2) }, waitFor, tick)
			}},
		tcase{"process.kill by the hostile comm itself", "process.kill", map[string]any{"match": map[string]any{"name": hostileComm}}, rejected, nil},
	)

	// A process check watching the hostile process (before it is killed):
	// found, and its name quoted in the output.
	for _, name := range []string{hostileComm, "tend-inj-worker"} {
		ch, err := checks.New(&agentv1.CheckSpec{Id: "p", Check: &agentv1.CheckSpec_Process{Process: &agentv1.ProcessCheck{Name: name}}})
		require.NoError(t, err)
		res := ch.Check(context.Background())
		require.Equal(t, agentv1.CheckStatus_CHECK_STATUS_OK, res.Status, res.Output)
		require.Contains(t, res.Output, strconv.Itoa(pid1))
		require.NotContains(t, res.Output, "\n")
		c.ran(t, "process check "+name)
	}

	now := time.Now()
	for i, tc := range cases {
		seq := uint64(i + 1)
		tk := &taskv1.Task{
			TaskId: fmt.Sprintf("inj-%d", seq), AgentId: agentID, IncidentId: "inc", Policy: "p", PolicyVersion: 1,
			Action: tc.action, Params: params(t, tc.params), Seq: seq,
			NotBefore: timestamppb.New(now.Add(-time.Minute)), ExpiresAt: timestamppb.New(now.Add(10 * time.Minute)),
			Timeout: durationpb.New(20 * time.Second), Attempt: 1,
		}
		env, err := task.Seal(key, tk)
		require.NoError(t, err)
		r.Deliver(&agentv1.TaskDelivery{Envelope: env})
		u := finalUpdate(t, db, tk.GetTaskId())
		c.ran(t, tc.what)
		switch tc.want {
		case rejected:
			require.Equal(t, agentv1.TaskState_TASK_STATE_REJECTED, u.GetState(), "%s: %s", tc.what, u.GetOutput())
			require.Contains(t, u.GetReason(), tc.action, "%s: the reason names the action", tc.what)
			t.Logf("%-60s rejected: %s", tc.what, u.GetReason())
		case literally:
			tc.check(t, u)
			t.Logf("%-60s %s: %.120q", tc.what, u.GetState(), u.GetOutput())
		}
	}
	c.ran(t, "everything")
	t.Logf("%d tasks, %d payloads: the canary never ran", len(cases), len(payloads))
}

// finalUpdate waits for the last update of a task (succeeded, failed or
// rejected).
func finalUpdate(t *testing.T, db *state.DB, id string) *agentv1.TaskUpdate {
	t.Helper()
	var final *agentv1.TaskUpdate
	require.Eventually(t, func() bool {
		us, err := db.PendingTaskUpdates()
		if err != nil {
			return false
		}
		for _, u := range us {
			if u.GetTaskId() == id && u.GetState() != agentv1.TaskState_TASK_STATE_RUNNING {
				final = u
			}
		}
		return final != nil
	}, 30*time.Second, 5*time.Millisecond, "no final update for task %s", id)
	return final
}
