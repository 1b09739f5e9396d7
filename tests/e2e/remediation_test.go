package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

// remediationHost is one agent with its own directory, used by the
// remediation tests.
type remediationHost struct {
	dir, pidfile, spool, svcAddr string
	agent                        *agentProc
}

func startDemoService(t *testing.T, h *remediationHost) {
	t.Helper()
	cmd := exec.Command(bin("tend-demo-service"), "--listen", h.svcAddr, "--pidfile", h.pidfile)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	require.NoError(t, cmd.Start())
	go func() { _ = cmd.Wait() }()
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + h.svcAddr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, 10*time.Second, 50*time.Millisecond)
}

// servicePid reads the demo service's pid (Tend may have restarted it: it is
// then not our child, so it is stopped by the pid in its pidfile).
func servicePid(h *remediationHost) int {
	b, err := os.ReadFile(h.pidfile)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

func newRemediationHost(t *testing.T, cp *controlPlane, name, token, actions string) *remediationHost {
	t.Helper()
	dir := t.TempDir()
	h := &remediationHost{dir: dir, pidfile: filepath.Join(dir, "service.pid"), spool: filepath.Join(dir, "spool"), svcAddr: freeAddr(t)}
	require.NoError(t, os.MkdirAll(h.spool, 0o755))
	startDemoService(t, h)
	t.Cleanup(func() {
		if pid := servicePid(h); pid > 1 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	actions = strings.NewReplacer("$BIN", bin("tend-demo-service"), "$ADDR", h.svcAddr, "$PIDFILE", h.pidfile, "$SPOOL", h.spool).Replace(actions)
	cfg := writeFile(t, dir, "agent.yaml", fmt.Sprintf("pluginDir: %q\n%s", binDir, actions))
	labels := fmt.Sprintf("role=web,app=demo,demo_addr=%s,demo_dir=%s,demo_bin=%s", h.svcAddr, dir, bin("tend-demo-service"))
	h.agent = startAgent(t, cp, name, filepath.Join(dir, "data"), token, "--config", cfg, "--labels", labels)
	cp.waitAgentStatus(t, name, "connected", 20*time.Second)
	return h
}

const allowDemo = `actions:
  process.restart:
    commands: [["$BIN", "--listen", "$ADDR", "--pidfile", "$PIDFILE"]]
    pidfiles: ["$PIDFILE"]
  disk.cleanup:
    paths: ["$SPOOL"]
`

func applyFile(t *testing.T, cp *controlPlane, content string) {
	t.Helper()
	p := writeFile(t, t.TempDir(), "policy.yaml", content)
	cp.mustTendctl(t, "apply", "-f", p)
}

// waitIncident waits for an incident of the policy on the agent to reach
// one of the states, and returns it with its tasks.
func waitIncident(t *testing.T, cp *controlPlane, agent, pol string, within time.Duration, states ...string) *adminv1.GetIncidentResponse {
	t.Helper()
	admin := cp.admin(t)
	var got *adminv1.GetIncidentResponse
	require.Eventually(t, func() bool {
		resp, err := admin.ListIncidents(ctxTimeout(t, 5*time.Second), &adminv1.ListIncidentsRequest{Agent: agent, Policy: pol})
		if err != nil {
			return false
		}
		for _, inc := range resp.GetIncidents() {
			for _, s := range states {
				if inc.GetState() == s {
					got, err = admin.GetIncident(ctxTimeout(t, 5*time.Second), &adminv1.GetIncidentRequest{Id: inc.GetId()})
					return err == nil
				}
			}
		}
		return false
	}, within, 100*time.Millisecond, "no incident of %s on %s reached %v", pol, agent, states)
	out, _, _ := cp.tendctl(t, "describe", "incident", got.GetIncident().GetId())
	t.Logf("tendctl describe incident:\n%s", out)
	return got
}

func kinds(inc *adminv1.Incident) []string {
	var out []string
	for _, e := range inc.GetTimeline() {
		out = append(out, e.GetKind())
	}
	return out
}

// applyDemoPolicies applies the demo's policies and waits until the agent
// reports all three of their checks ok.
func applyDemoPolicies(t *testing.T, cp *controlPlane, agent string) {
	t.Helper()
	root, _ := filepath.Abs("../..")
	cp.mustTendctl(t, "apply", "-f", filepath.Join(root, "deploy/examples/demo-service.yaml"))
	require.Eventually(t, func() bool {
		out, _, err := cp.tendctl(t, "get", "checks", "--agent", agent, "-o", "json")
		return err == nil && strings.Count(out, `"status": "ok"`) >= 3
	}, 20*time.Second, 200*time.Millisecond)
}

// A killed process is restarted by process.restart; the incident is
// resolved through verification.
func TestKilledProcessIsRestartedAndVerified(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), "")
	h := newRemediationHost(t, cp, "web-1", cp.token(t), allowDemo)
	applyDemoPolicies(t, cp, "web-1")

	old := servicePid(h)
	require.NoError(t, syscall.Kill(old, syscall.SIGKILL))
	got := waitIncident(t, cp, "web-1", "demo-process", 45*time.Second, "resolved", "escalated")
	require.Equal(t, "resolved", got.GetIncident().GetState(), "timeline: %v", kinds(got.GetIncident()))
	require.Subset(t, kinds(got.GetIncident()), []string{"detected", "decided", "signed", "sent", "started", "finished", "verifying", "verified"})
	require.NotEqual(t, old, servicePid(h), "a new process runs")
	require.NoError(t, syscall.Kill(servicePid(h), 0), "and it is alive")
	require.Equal(t, "succeeded", got.GetTasks()[0].GetState())
}

// A filled tmpfs is cleaned by disk.cleanup below its threshold.
func TestFullTmpfsIsCleaned(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), "")
	h := newRemediationHost(t, cp, "web-1", cp.token(t), allowDemo)
	require.NoError(t, unix.Mount("tmpfs", h.spool, "tmpfs", 0, "size=2m"))
	t.Cleanup(func() { _ = unix.Unmount(h.spool, unix.MNT_DETACH) })
	applyDemoPolicies(t, cp, "web-1")

	keep := filepath.Join(h.spool, "keep.dat") // not *.log: must survive
	require.NoError(t, os.WriteFile(keep, make([]byte, 64<<10), 0o644))
	for i := 0; i < 7; i++ {
		require.NoError(t, os.WriteFile(filepath.Join(h.spool, fmt.Sprintf("big-%d.log", i)), make([]byte, 256<<10), 0o644))
	}
	var st unix.Statfs_t
	require.NoError(t, unix.Statfs(h.spool, &st))
	t.Logf("spool filled to %.0f%%", float64(st.Blocks-st.Bfree)/float64(st.Blocks)*100)

	got := waitIncident(t, cp, "web-1", "demo-disk", 45*time.Second, "resolved", "escalated")
	require.Equal(t, "resolved", got.GetIncident().GetState(), "timeline: %v", kinds(got.GetIncident()))
	require.NoError(t, unix.Statfs(h.spool, &st))
	used := float64(st.Blocks-st.Bfree) / float64(st.Blocks) * 100
	require.Less(t, used, 80.0, "below the policy's threshold")
	_, err := os.Stat(keep)
	require.NoError(t, err, "files outside the pattern are kept")
}

// A failing HTTP check is fixed (the service is restarted).
func TestFailingHTTPCheckIsFixed(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), "")
	h := newRemediationHost(t, cp, "web-1", cp.token(t), allowDemo)
	applyDemoPolicies(t, cp, "web-1")
	resp, err := http.Post("http://"+h.svcAddr+"/fail", "text/plain", nil)
	require.NoError(t, err)
	resp.Body.Close()
	got := waitIncident(t, cp, "web-1", "demo-http", 45*time.Second, "resolved", "escalated")
	require.Equal(t, "resolved", got.GetIncident().GetState(), "timeline: %v", kinds(got.GetIncident()))
	resp, err = http.Get("http://" + h.svcAddr + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
}

// An action outside the agent's allow-list is rejected; the incident says
// why, and nothing ran.
func TestActionOutsideAllowListIsRejected(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), "")
	canary := filepath.Join(t.TempDir(), "canary")
	// The agent allows only disk.cleanup; the policy asks for exec.run.
	h := newRemediationHost(t, cp, "web-1", cp.token(t), "actions:\n  disk.cleanup:\n    paths: [\"$SPOOL\"]\n")
	applyFile(t, cp, fmt.Sprintf(`apiVersion: tend.dev/v1
kind: Policy
metadata: {name: touch-canary}
spec:
  selector: {matchLabels: {app: demo}}
  check:
    type: process
    interval: 1s
    process: {pidfile: "%s/missing.pid"}
  trigger: {failures: 1, window: 1}
  remediation:
    action: exec.run
    params: {argv: ["/usr/bin/touch", %q]}
    maxAttempts: 3
`, h.dir, canary))
	got := waitIncident(t, cp, "web-1", "touch-canary", 30*time.Second, "escalated", "resolved")
	inc := got.GetIncident()
	require.Equal(t, "escalated", inc.GetState())
	require.Contains(t, inc.GetReason(), "allow-list")
	require.Equal(t, "rejected", got.GetTasks()[0].GetState())
	require.Len(t, got.GetTasks(), 1, "a rejection is not retried")
	_, err := os.Stat(canary)
	require.True(t, os.IsNotExist(err), "the canary must never be created")
}

// A remediation that does not fix the problem is retried with backoff, then
// escalated to the webhook, which gets the whole timeline.
func TestUnfixableProblemIsRetriedThenEscalated(t *testing.T) {
	var mu sync.Mutex
	var bodies [][]byte
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, b)
		mu.Unlock()
	})}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Close() })

	cp := startControlPlane(t, t.TempDir(), "")
	h := newRemediationHost(t, cp, "web-1", cp.token(t), "actions:\n  exec.run:\n    commands: [[\"/bin/true\"]]\n")
	applyFile(t, cp, fmt.Sprintf(`apiVersion: tend.dev/v1
kind: Policy
metadata: {name: never-fixed}
spec:
  selector: {matchLabels: {app: demo}}
  check:
    type: process
    interval: 1s
    process: {pidfile: "%s/missing.pid"}
  trigger: {failures: 1, window: 1}
  remediation:
    action: exec.run
    params: {argv: ["/bin/true"]}
    verify: {within: 2s}
    maxAttempts: 2
    backoff: 1s
  escalate:
    webhook: "http://%s/hook"
`, h.dir, lis.Addr()))
	got := waitIncident(t, cp, "web-1", "never-fixed", 60*time.Second, "escalated")
	inc := got.GetIncident()
	require.EqualValues(t, 2, inc.GetAttempts())
	require.Len(t, got.GetTasks(), 2)
	require.Contains(t, kinds(inc), "retry")
	require.Contains(t, inc.GetReason(), "2 of 2 attempts")

	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(bodies) == 1 }, 20*time.Second, 100*time.Millisecond)
	var body struct {
		Kind     string `json:"kind"`
		Incident struct {
			ID       string `json:"id"`
			Timeline []struct {
				Kind string `json:"kind"`
			} `json:"timeline"`
		} `json:"incident"`
		Tasks []json.RawMessage `json:"tasks"`
	}
	mu.Lock()
	require.NoError(t, json.Unmarshal(bodies[0], &body))
	mu.Unlock()
	require.Equal(t, "tend.escalation", body.Kind)
	require.Equal(t, inc.GetId(), body.Incident.ID)
	require.GreaterOrEqual(t, len(body.Incident.Timeline), 8, "the webhook gets the whole timeline")
	require.Len(t, body.Tasks, 2)
}
