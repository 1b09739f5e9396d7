package e2e

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/internal/pki"
	"tend.dev/tend/internal/task"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
	taskv1 "tend.dev/tend/proto/tend/task/v1"
)

// The injection corpus against the real binaries (tend-controlplane,
// tendctl, tend-agent and the tend-plugin-* binaries through go-plugin):
// parameters carrying ';', newlines, $(...), backticks, pipes, leading '-'
// and NUL, and host process and file names crafted the same way. A canary
// program, reachable by its absolute path and through the PATH every
// binary inherits, leaves a mark if anything ever runs it: it never does.
// Each hostile value is either refused with a reason that names the field,
// or handled literally (as data, never as a command line).

// e2eCanary is the canary program and the file it would write.
type e2eCanary struct{ dir, path, name, marker string }

func newE2ECanary(t *testing.T) e2eCanary {
	t.Helper()
	dir := t.TempDir()
	c := e2eCanary{dir: dir, path: filepath.Join(dir, "tendcanary"), name: "tendcanary", marker: filepath.Join(t.TempDir(), "canary-ran")}
	require.NoError(t, os.WriteFile(c.path, []byte("#!/bin/sh\necho \"$0 $*\" >> '"+c.marker+"'\n"), 0o755))
	// Every binary started from now on (control plane, agent, plugins)
	// finds the canary by its bare name too.
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return c
}

func (c e2eCanary) neverRan(t *testing.T, after string) {
	t.Helper()
	if b, err := os.ReadFile(c.marker); err == nil {
		t.Fatalf("the canary ran (after %s): %s", after, b)
	}
}

func (c e2eCanary) payloads() []string {
	var out []string
	for _, prog := range []string{c.path, c.name} {
		out = append(out, ";"+prog, "x;"+prog, "x\n"+prog, "x\r\n"+prog, "$("+prog+")", "`"+prog+"`",
			"x|"+prog, "x&&"+prog, "-"+prog, "--exec="+prog, "x\x00"+prog)
	}
	return out
}

func hasCtl(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0
}

// jsonYAML renders v as JSON, which YAML reads as it is.
func jsonYAML(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

// startHostile starts a copy of /bin/sleep named name (its comm) with
// argv[0] argv0; it is killed by pid at cleanup.
func startHostile(t *testing.T, name, argv0 string) int {
	t.Helper()
	src, err := os.ReadFile("/bin/sleep")
	require.NoError(t, err)
	binPath := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(binPath, src, 0o755))
	cmd := &exec.Cmd{Path: binPath, Args: []string{argv0, "300"}, SysProcAttr: &syscall.SysProcAttr{Setpgid: true}}
	require.NoError(t, cmd.Start())
	pid := cmd.Process.Pid
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = syscall.Kill(-pid, syscall.SIGKILL); <-done })
	require.Eventually(t, func() bool {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		return err == nil && strings.TrimSuffix(string(b), "\n") == name[:min(len(name), 15)]
	}, 10*time.Second, 10*time.Millisecond)
	return pid
}

func procAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z'
}

func TestInjectionCorpusEndToEnd(t *testing.T) {
	c := newE2ECanary(t)
	payloads := c.payloads()
	cpDir := t.TempDir()
	cp := startControlPlane(t, cpDir, "")

	// 1. The control plane refuses, when the policy is applied, params
	// that no agent could take: control characters, relative programs,
	// names starting with '-', paths that are not clean, unit names
	// systemd does not allow. Nothing is stored, nothing signed.
	refused := 0
	policyDir := t.TempDir()
	for i, p := range payloads {
		type site struct {
			action, field string
			params        map[string]any
		}
		sites := []site{
			{"exec.run", "argv[0]", map[string]any{"argv": []any{p}}},
			{"service.restart", "name", map[string]any{"name": p}},
			{"disk.cleanup", "path", map[string]any{"path": p}},
			{"disk.cleanup", "pattern", map[string]any{"path": "/var/log/app", "pattern": p}},
			{"process.kill", "match.name", map[string]any{"match": map[string]any{"name": p}}},
			{"process.restart", "match.name", map[string]any{"match": map[string]any{"name": p}, "command": []any{"/bin/true"}}},
		}
		// In an argv, shell metacharacters are plain data; control
		// characters are refused.
		if hasCtl(p) {
			sites = append(sites,
				site{"exec.run", "argv[1]", map[string]any{"argv": []any{"/bin/echo", p}}},
				site{"process.restart", "command[1]", map[string]any{"match": map[string]any{"pidfile": "/run/x.pid"}, "command": []any{"/bin/echo", p}}},
			)
		}
		for j, s := range sites {
			name := fmt.Sprintf("inj-%d-%d", i, j)
			doc := fmt.Sprintf("apiVersion: tend.dev/v1\nkind: Policy\nmetadata: {name: %s}\nspec:\n  selector: {matchLabels: {role: inj}}\n"+
				"  check: {type: command, command: {argv: [/bin/true]}}\n  remediation:\n    action: %s\n    params: %s\n", name, s.action, jsonYAML(t, s.params))
			file := writeFile(t, policyDir, name+".yaml", doc)
			out, errOut, err := cp.tendctl(t, "apply", "-f", file)
			require.Error(t, err, "%s %s %q was accepted: %s", s.action, s.field, p, out)
			require.Contains(t, errOut, "spec.remediation.params", "%s %s %q: the error names the field", s.action, s.field, p)
			refused++
		}
	}
	resp, err := cp.admin(t).ListPolicies(ctxTimeout(t, 5*time.Second), &adminv1.ListPoliciesRequest{})
	require.NoError(t, err)
	require.Empty(t, resp.GetPolicies(), "no hostile policy was stored")
	c.neverRan(t, "applying the policies")
	t.Logf("control plane: %d hostile policies refused at apply", refused)

	// 2. Hostile host data through the real loop: a process whose comm and
	// argv[0] are injections (argv[0]'s base name is the allowed
	// "tend-inj-worker"), watched by a process check and killed by name by
	// a task the control plane signs; a file cleanup of hostile file names.
	hostileComm := "w$(" + c.name + ")"
	worker := startHostile(t, hostileComm, "/tmp/$("+c.path+")\n`"+c.path+"`;"+c.path+"/tend-inj-worker")
	cleanDir := t.TempDir()
	for _, n := range []string{"$(" + c.name + ").log", "`" + c.name + "`;x.log", "a\nb.log", "-rf.log"} {
		require.NoError(t, os.WriteFile(filepath.Join(cleanDir, n), []byte("x"), 0o644))
	}
	deadPidfile := filepath.Join(t.TempDir(), "dead.pid")
	literal := [][]string{{"/bin/echo", "x"}}
	for _, p := range payloads {
		if !hasCtl(p) {
			literal = append(literal, []string{"/bin/echo", p})
		}
	}
	dir := t.TempDir()
	agentYAML := fmt.Sprintf("pluginDir: %q\nactions: %s\n", binDir, jsonYAML(t, map[string]any{
		"exec.run":        map[string]any{"commands": literal},
		"process.restart": map[string]any{"commands": literal, "pidfiles": []string{deadPidfile}},
		"process.kill":    map[string]any{"names": []string{"tend-inj-worker"}},
		"disk.cleanup":    map[string]any{"paths": []string{cleanDir}},
		"service.restart": map[string]any{"units": []string{"nginx.service"}},
	}))
	cfg := writeFile(t, dir, "agent.yaml", agentYAML)
	agentData := filepath.Join(dir, "data")
	startAgent(t, cp, "inj", agentData, cp.token(t), "--config", cfg, "--labels", "role=inj")
	cp.waitAgentStatus(t, "inj", "connected", 20*time.Second)
	agentID := cp.agents(t)["inj"].ID

	applyFile(t, cp, `apiVersion: tend.dev/v1
kind: Policy
metadata: {name: inj-watch}
spec:
  selector: {matchLabels: {role: inj}}
  check: {type: process, interval: 1s, process: {name: "`+hostileComm+`"}}
`)
	// The process check saw the hostile process, and says so quoted.
	admin := cp.admin(t)
	var watched string
	require.Eventually(t, func() bool {
		r, err := admin.ListChecks(ctxTimeout(t, 5*time.Second), &adminv1.ListChecksRequest{Agent: "inj"})
		if err != nil {
			return false
		}
		for _, ch := range r.GetChecks() {
			if ch.GetCheckId() == "inj-watch" && ch.GetLast().GetStatus() == agentv1.CheckStatus_CHECK_STATUS_OK {
				watched = ch.GetLast().GetOutput()
				return true
			}
		}
		return false
	}, 30*time.Second, 100*time.Millisecond, "the process check never saw the hostile process")
	require.Contains(t, watched, strconv.Quote(hostileComm))
	require.Contains(t, watched, strconv.Itoa(worker))

	// Then the remediations (/bin/false exits 1, a warning: `when` makes
	// it count).
	applyFile(t, cp, `apiVersion: tend.dev/v1
kind: Policy
metadata: {name: inj-kill}
spec:
  selector: {matchLabels: {role: inj}}
  check: {type: command, interval: 1s, command: {argv: [/bin/false]}}
  trigger: {failures: 1, window: 1, when: 'result.status != "ok"'}
  remediation:
    action: process.kill
    params: {match: {name: tend-inj-worker}, signal: KILL}
    maxAttempts: 1
    verify: {within: 1s}
---
apiVersion: tend.dev/v1
kind: Policy
metadata: {name: inj-clean}
spec:
  selector: {matchLabels: {role: inj}}
  check: {type: command, interval: 1s, command: {argv: [/bin/false]}}
  trigger: {failures: 1, window: 1, when: 'result.status != "ok"'}
  remediation:
    action: disk.cleanup
    params: {path: "`+cleanDir+`", pattern: "*.log"}
    maxAttempts: 1
    verify: {within: 1s}
`)
	taskOutput := func(pol string) string {
		var out string
		require.Eventually(t, func() bool {
			r, err := admin.ListTasks(ctxTimeout(t, 5*time.Second), &adminv1.ListTasksRequest{Agent: "inj"})
			if err != nil {
				return false
			}
			for _, tk := range r.GetTasks() {
				if tk.GetState() == "succeeded" {
					if inc, err := admin.GetIncident(ctxTimeout(t, 5*time.Second), &adminv1.GetIncidentRequest{Id: tk.GetIncident()}); err == nil && inc.GetIncident().GetPolicy() == pol {
						out = tk.GetOutput()
						return true
					}
				}
			}
			return false
		}, 60*time.Second, 200*time.Millisecond, "no task of %s succeeded", pol)
		return out
	}
	out := taskOutput("inj-kill")
	require.Contains(t, out, fmt.Sprintf("%d %s", worker, strconv.Quote(hostileComm)), "the hostile name is quoted in the task's output")
	require.Eventually(t, func() bool { return !procAlive(worker) }, 10*time.Second, 10*time.Millisecond)
	out = taskOutput("inj-clean")
	require.Contains(t, out, strconv.Quote("a\nb.log"))
	require.NotContains(t, out, "a\nb.log")
	entries, err := os.ReadDir(cleanDir)
	require.NoError(t, err)
	require.Empty(t, entries, "the hostile names were deleted as plain files")
	c.neverRan(t, "the real remediation loop")
	applyDelete := func(name string) { cp.mustTendctl(t, "delete", "policy", name) }
	for _, n := range []string{"inj-watch", "inj-kill", "inj-clean"} {
		applyDelete(n)
	}

	// 3. A compromised control plane: the real one goes away, a fake one
	// with its CA and task-signing key signs whatever it likes. The real
	// agent and plugins refuse each hostile value with a reason, or run it
	// literally.
	cp.stop(syscall.SIGTERM, 10*time.Second)
	ca, err := pki.ParseCA(mustRead(t, filepath.Join(cpDir, "ca.crt")), mustRead(t, filepath.Join(cpDir, "ca.key")))
	require.NoError(t, err)
	key, _, err := pki.LoadOrCreateSigningKey(filepath.Join(cpDir, pki.SigningKeyFile))
	require.NoError(t, err)
	serverCert, err := ca.IssueServerCert([]string{"127.0.0.1"}, time.Hour)
	require.NoError(t, err)
	lis, err := net.Listen("tcp", cp.addr)
	require.NoError(t, err)
	fake := &fakeControlPlane{envelopes: make(chan []byte, 16), updates: make(chan *agentv1.TaskUpdate, 64), hellos: make(chan *agentv1.Hello, 4)}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(), MinVersion: tls.VersionTLS13,
	})))
	agentv1.RegisterAgentServiceServer(srv, fake)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	select {
	case <-fake.hellos:
	case <-time.After(60 * time.Second):
		t.Fatal("the agent did not connect to the fake control plane")
	}

	// The real control plane's tasks had low seqs; start well above.
	seq := uint64(1000)
	run := func(what, action string, params map[string]any) *agentv1.TaskUpdate {
		t.Helper()
		seq++
		ps, err := structpb.NewStruct(params)
		require.NoError(t, err)
		id := fmt.Sprintf("task-inj-%d", seq)
		env, err := task.Seal(key, &taskv1.Task{TaskId: id, AgentId: agentID, IncidentId: "inc-inj", Policy: "inj", PolicyVersion: 1,
			Action: action, Params: ps, Seq: seq, NotBefore: timestamppb.New(time.Now().Add(-5 * time.Second)),
			ExpiresAt: timestamppb.New(time.Now().Add(time.Minute)), Timeout: durationpb.New(20 * time.Second), Attempt: 1})
		require.NoError(t, err)
		fake.envelopes <- env
		deadline := time.After(30 * time.Second)
		for {
			select {
			case u := <-fake.updates:
				if u.GetTaskId() != id || u.GetState() == agentv1.TaskState_TASK_STATE_RUNNING {
					continue
				}
				c.neverRan(t, what)
				return u
			case <-deadline:
				t.Fatalf("%s: no final update for task %s", what, id)
			}
		}
	}
	rejected, literally := 0, 0
	for _, p := range payloads {
		q := strconv.Quote(p)
		if !hasCtl(p) {
			u := run("exec.run argv[1] "+q, "exec.run", map[string]any{"argv": []any{"/bin/echo", p}})
			require.Equal(t, agentv1.TaskState_TASK_STATE_SUCCEEDED, u.GetState(), "%s: %s", q, u.GetReason())
			require.Contains(t, u.GetOutput(), "\n"+p+"\n", "echo printed the argument as it was")
			u = run("process.restart command[1] "+q, "process.restart",
				map[string]any{"match": map[string]any{"pidfile": deadPidfile}, "command": []any{"/bin/echo", p}, "confirm": "10ms"})
			require.Equal(t, agentv1.TaskState_TASK_STATE_FAILED, u.GetState(), "%s: echo exits at once and leaves no daemon: %s", q, u.GetOutput())
			literally += 2
		} else {
			u := run("exec.run argv[1] "+q, "exec.run", map[string]any{"argv": []any{"/bin/echo", p}})
			require.Equal(t, agentv1.TaskState_TASK_STATE_REJECTED, u.GetState())
			require.Contains(t, u.GetReason(), "control character")
			rejected++
		}
		for _, s := range []struct {
			what, action string
			params       map[string]any
		}{
			{"exec.run argv[0]", "exec.run", map[string]any{"argv": []any{p}}},
			{"process.restart match.name", "process.restart", map[string]any{"match": map[string]any{"name": p}, "command": []any{"/bin/echo", "x"}}},
			{"process.restart match.pidfile", "process.restart", map[string]any{"match": map[string]any{"pidfile": deadPidfile + p}, "command": []any{"/bin/echo", "x"}}},
			{"process.kill match.name", "process.kill", map[string]any{"match": map[string]any{"name": p}}},
			{"disk.cleanup path", "disk.cleanup", map[string]any{"path": cleanDir + "/" + p}},
			{"disk.cleanup pattern", "disk.cleanup", map[string]any{"path": cleanDir, "pattern": p}},
			{"service.restart name", "service.restart", map[string]any{"name": p}},
		} {
			u := run(s.what+" "+q, s.action, s.params)
			require.Equal(t, agentv1.TaskState_TASK_STATE_REJECTED, u.GetState(), "%s %s: %s", s.what, q, u.GetOutput())
			require.Contains(t, u.GetReason(), s.action, "%s %s: the reason names the action", s.what, q)
			require.NotContains(t, u.GetReason(), "\n", "hostile values are quoted in reasons")
			rejected++
		}
	}
	c.neverRan(t, "everything")
	t.Logf("agent: %d hostile tasks rejected with a reason, %d run literally; the canary never ran", rejected, literally)
}
