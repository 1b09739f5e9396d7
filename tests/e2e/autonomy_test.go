package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// processPolicy is the demo's process policy for one host (selected by its
// unique demo_addr label), autonomous or not.
func processPolicy(name, addr string, autonomous bool) string {
	auto := ""
	if autonomous {
		auto = "  autonomous: true\n  offline: {after: 5s, maxPerHour: 2}\n"
	}
	return fmt.Sprintf(`apiVersion: tend.dev/v1
kind: Policy
metadata: {name: %s}
spec:
  selector: {matchLabels: {demo_addr: "%s"}}
%s  check:
    type: process
    interval: 1s
    process: {pidfile: "{{ .labels.demo_dir }}/service.pid"}
  trigger: {failures: 2, window: 3}
  remediation:
    action: process.restart
    params:
      match: {pidfile: "{{ .labels.demo_dir }}/service.pid"}
      command: ["{{ .labels.demo_bin }}", "--listen", "{{ .labels.demo_addr }}", "--pidfile", "{{ .labels.demo_dir }}/service.pid"]
    timeout: 10s
    verify: {within: 15s}
    backoff: 2s
`, name, addr, auto)
}

func alive(pid int) bool { return pid > 1 && syscall.Kill(pid, 0) == nil }

// Local autonomy: with the control plane gone, an autonomous policy fixes a
// killed process on its agent, within its offline budget, and the incident
// appears with the agent's whole timeline once the control plane is back;
// the same failure under a policy that is not autonomous waits for the
// control plane.
func TestAutonomousPolicyFixesAKilledProcessWhileCutOff(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), "")
	auto := newRemediationHost(t, cp, "auto-1", cp.token(t), allowDemo)
	manual := newRemediationHost(t, cp, "manual-1", cp.token(t), allowDemo)
	applyFile(t, cp, processPolicy("auto-process", auto.svcAddr, true)+"---\n"+processPolicy("manual-process", manual.svcAddr, false))
	require.Eventually(t, func() bool {
		out, _, err := cp.tendctl(t, "get", "checks", "-o", "json")
		return err == nil && strings.Count(out, `"status": "ok"`) >= 2
	}, 20*time.Second, 200*time.Millisecond)
	require.Eventually(t, func() bool {
		return strings.Contains(auto.agent.output(), "standing orders updated") && strings.Contains(auto.agent.output(), "orders=1")
	},
		10*time.Second, 100*time.Millisecond, "the autonomous host holds its standing order")

	// Cut off: the control plane dies; both services are killed.
	cp.kill()
	autoOld, manualOld := servicePid(auto), servicePid(manual)
	require.NoError(t, syscall.Kill(autoOld, syscall.SIGKILL))
	require.NoError(t, syscall.Kill(manualOld, syscall.SIGKILL))
	cutAt := time.Now()

	require.Eventually(t, func() bool {
		p := servicePid(auto)
		return p != autoOld && alive(p)
	}, 30*time.Second, 100*time.Millisecond, "the autonomous policy restarts the process while the control plane is away")
	t.Logf("autonomous restart %.1fs after the kill (offline.after 5s, trigger 2 of 3 at 1s)", time.Since(cutAt).Seconds())
	time.Sleep(3 * time.Second)
	require.False(t, alive(servicePid(manual)), "nothing runs for a policy that is not autonomous")
	require.Contains(t, auto.agent.output(), "running a standing order")
	require.NotContains(t, manual.agent.output(), "running a standing order")

	// The control plane comes back: the story is reported and becomes an
	// incident; the other host's process is then fixed by the control plane.
	n := startControlPlane(t, cp.dataDir, cp.addr, cp.args...)
	cp.proc, cp.http = n.proc, n.http
	got := waitIncident(t, cp, "auto-1", "auto-process", 30*time.Second, "resolved", "escalated")
	require.Equal(t, "resolved", got.GetIncident().GetState(), "timeline: %v", kinds(got.GetIncident()))
	require.Subset(t, kinds(got.GetIncident()), []string{"detected", "decided", "started", "finished", "verifying", "verified", "reported"})
	require.Contains(t, got.GetIncident().GetTimeline()[0].GetMessage(), "offline, under standing order")
	m := waitIncident(t, cp, "manual-1", "manual-process", 45*time.Second, "resolved", "escalated")
	require.Equal(t, "resolved", m.GetIncident().GetState(), "timeline: %v", kinds(m.GetIncident()))
	require.True(t, alive(servicePid(manual)))

	// Exactly one autonomous incident, and no control-plane task for it: the
	// results the agent sent back after reconnecting are old news.
	inc, _, err := cp.tendctl(t, "get", "incidents", "--agent", "auto-1", "-o", "json")
	require.NoError(t, err)
	require.Equal(t, 1, strings.Count(inc, `"policy": "auto-process"`), inc)
	tasks, _, err := cp.tendctl(t, "get", "tasks", "--agent", "auto-1", "-o", "json")
	require.NoError(t, err)
	require.NotContains(t, tasks, "process.restart", "the control plane did not restart it a second time")
}
