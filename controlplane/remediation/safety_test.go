package remediation

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"tend.dev/tend/controlplane/store"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
	taskv1 "tend.dev/tend/proto/tend/task/v1"
)

// safetyPolicy is basePolicy in enforce mode with its limits replaced.
func safetyPolicy(limits string, extra ...string) string {
	s := strings.Replace(policyYAML("enforce"), `  limits: {maxConcurrent: "1"}`, "  limits: "+limits, 1)
	for i := 0; i+1 < len(extra); i += 2 {
		s = strings.Replace(s, extra[i], extra[i+1], 1)
	}
	return s
}

func agentNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("a%02d", i+1)
	}
	return out
}

// fail sends two failing results: enough to trigger (2 of 3).
func (h *harness) fail(agent string) {
	h.result(agent, "web", crit)
	h.result(agent, "web", crit)
}

func lastRule(inc store.Incident) string {
	for i := len(inc.Timeline) - 1; i >= 0; i-- {
		if inc.Timeline[i].Rule != "" {
			return inc.Timeline[i].Rule
		}
	}
	return ""
}

func TestApprovalRequiredWaitsThenSends(t *testing.T) {
	h := newHarness(t, safetyPolicy(`{correlation: {percent: 0}}`, "    cooldown: 0s\n", "    cooldown: 0s\n    requireApproval: true\n    approvalTimeout: 1m\n"), "a1")
	h.fail("a1")
	inc := h.incident("a1", "web", store.IncidentSuppressed)
	require.Equal(t, "approval_required", lastRule(inc))
	h.noTask("a1")
	tasks, err := h.st.ListTasks(store.TaskFilter{AgentID: "a1"})
	require.NoError(t, err)
	require.Len(t, tasks, 1)
	waiting := tasks[0]
	require.Equal(t, store.TaskAwaitingApproval, waiting.State)
	require.Zero(t, waiting.Seq, "no seq until approved")
	require.Contains(t, inc.Reason, "tendctl approve task "+waiting.ID)

	// More failures do not create a second task to approve.
	h.result("a1", "web", crit)
	h.noTask("a1")

	_, err = h.m.Approve(context.Background(), "task-nope", "alice", "")
	require.ErrorIs(t, err, store.ErrNotFound)
	got, err := h.m.Approve(context.Background(), waiting.ID, "alice (operator)", "checked the host")
	require.NoError(t, err)
	require.Equal(t, "alice (operator)", got.ApprovedBy)
	tk := h.task("a1")
	require.Equal(t, waiting.ID, tk.GetTaskId(), "the task the person approved is the one sent")
	require.Equal(t, uint64(1), tk.GetSeq())
	_, err = h.m.Approve(context.Background(), waiting.ID, "bob", "")
	require.ErrorIs(t, err, store.ErrState, "approving twice")
	inc = h.incident("a1", "web", store.IncidentRemediating)
	require.Contains(t, timelineKinds(inc), "approved")
}

func TestApprovalTimeoutEscalates(t *testing.T) {
	h := newHarness(t, safetyPolicy(`{correlation: {percent: 0}}`, "    cooldown: 0s\n", "    cooldown: 0s\n    requireApproval: true\n    approvalTimeout: 500ms\n"), "a1")
	h.fail("a1")
	inc := h.incident("a1", "web", store.IncidentEscalated)
	require.Contains(t, inc.Reason, "approval_timeout")
	h.noTask("a1")
	tasks, err := h.st.ListTasks(store.TaskFilter{AgentID: "a1"})
	require.NoError(t, err)
	require.Len(t, tasks, 1)
	require.Equal(t, store.TaskExpired, tasks[0].State, "the unapproved task can never be sent")
	_, err = h.m.Approve(context.Background(), tasks[0].ID, "late", "")
	require.ErrorIs(t, err, store.ErrState)
}

func TestBreakerOpensAfterKFailuresAndNeedsRearm(t *testing.T) {
	h := newHarness(t, safetyPolicy(`{breaker: {failures: 2, window: 1h}, correlation: {percent: 0}}`, "maxAttempts: 2", "maxAttempts: 1"),
		"a1", "a2", "a3", "a4")
	for _, a := range []string{"a1", "a2"} {
		h.fail(a)
		tk := h.task(a)
		h.update(a, tk, agentv1.TaskState_TASK_STATE_FAILED, "exit 1")
		h.incident(a, "web", store.IncidentEscalated)
	}
	st, err := h.m.Status(context.Background(), "web", 0)
	require.NoError(t, err)
	require.True(t, st.BreakerOpen, "2 failed attempts within the hour open the breaker")
	require.Equal(t, 2, st.BreakerFailures)

	// A new incident escalates at once, with the rule, and sends nothing.
	h.fail("a3")
	inc := h.incident("a3", "web", store.IncidentEscalated)
	require.Contains(t, inc.Reason, "breaker_open")
	require.Contains(t, inc.Reason, "tendctl")
	h.noTask("a3")

	// The breaker survives a restart.
	h.m.Stop()
	m2 := New(h.m.cfg)
	require.NoError(t, m2.Start())
	t.Cleanup(m2.Stop)
	h.m = m2
	st, err = h.m.Status(context.Background(), "web", 0)
	require.NoError(t, err)
	require.True(t, st.BreakerOpen)

	// Re-armed by a person, the policy acts again.
	st, err = h.m.Rearm(context.Background(), "web", "alice", "fixed the package")
	require.NoError(t, err)
	require.False(t, st.BreakerOpen)
	h.fail("a4")
	h.task("a4")
	_, err = h.m.Rearm(context.Background(), "nope", "alice", "")
	require.ErrorIs(t, err, store.ErrNotFound)
}

// Blast radius: 20 agents fail the same policy at once with maxConcurrent 2;
// never more than 2 tasks are in flight, and every agent is remediated.
func TestBlastRadiusMaxConcurrentAcrossTwentyAgents(t *testing.T) {
	agents := agentNames(20)
	h := newHarness(t, safetyPolicy(`{maxConcurrent: "2", correlation: {percent: 0}}`), agents...)
	for _, a := range agents {
		h.fail(a)
	}
	inFlight := map[string]*taskv1.Task{}
	maxSeen, done := 0, 0
	deadline := time.Now().Add(30 * time.Second)
	for done < len(agents) && time.Now().Before(deadline) {
		// Collect every task delivered so far.
		for _, a := range agents {
			select {
			case m := <-h.sessions[a].Out():
				require.NotNil(t, m.GetTask(), "unexpected message %v", m)
				inFlight[a] = h.openTask(a, m.GetTask().GetEnvelope())
			default:
			}
		}
		maxSeen = max(maxSeen, len(inFlight))
		require.LessOrEqual(t, len(inFlight), 2, "tasks in flight")
		// Finish one and verify it.
		for a, tk := range inFlight {
			h.update(a, tk, agentv1.TaskState_TASK_STATE_SUCCEEDED, "")
			h.incident(a, "web", store.IncidentVerifying)
			h.result(a, "web", ok)
			h.incident(a, "web", store.IncidentResolved)
			delete(inFlight, a)
			done++
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.Equal(t, len(agents), done, "every agent remediated in turn")
	t.Logf("blast radius: 20 agents failing, maxConcurrent 2: observed at most %d tasks in flight", maxSeen)
	require.Equal(t, 2, maxSeen)
}

// Correlated failure: 12 of 20 agents failing one policy (more than 50%)
// give one fleet-wide incident, escalated, and no task at all.
func TestCorrelatedFailureOpensOneFleetIncidentAndSendsNothing(t *testing.T) {
	agents := agentNames(20)
	h := newHarness(t, safetyPolicy(`{correlation: {percent: 50, window: 5m, minAgents: 3}}`), agents...)
	failing := agents[:12]
	for _, a := range failing {
		h.result(a, "web", crit) // the first failure of each: no trigger yet
	}
	for _, a := range failing {
		h.result(a, "web", crit) // triggers
	}
	for _, a := range failing {
		inc := h.incident(a, "web", store.IncidentSuppressed)
		require.Equal(t, "correlated", lastRule(inc), a)
	}
	for _, a := range agents {
		h.noTask(a)
	}
	tasks, err := h.st.ListTasks(store.TaskFilter{})
	require.NoError(t, err)
	require.Empty(t, tasks, "0 tasks")
	fleetIncs, err := h.st.ListIncidents(store.IncidentFilter{AgentID: store.FleetAgentID})
	require.NoError(t, err)
	require.Len(t, fleetIncs, 1, "one fleet-wide incident")
	require.Equal(t, store.IncidentEscalated, fleetIncs[0].State)
	require.Contains(t, fleetIncs[0].Reason, "11 of 20", "opened as soon as more than half fail")
	st, err := h.m.Status(context.Background(), "web", 0)
	require.NoError(t, err)
	require.True(t, st.Correlated)
	require.Equal(t, fleetIncs[0].ID, st.FleetIncident)

	// Re-armed by a person who fixed the shared cause, host-by-host
	// remediation resumes for the incidents still open.
	_, err = h.m.Rearm(context.Background(), "web", "alice", "rolled back the deploy")
	require.NoError(t, err)
	h.task(failing[0])
}

// Fewer failing agents than the share: remediated host by host.
func TestUncorrelatedFailuresAreRemediated(t *testing.T) {
	agents := agentNames(20)
	h := newHarness(t, safetyPolicy(`{correlation: {percent: 50, window: 5m, minAgents: 3}}`), agents...)
	for _, a := range agents[:5] {
		h.fail(a)
	}
	for _, a := range agents[:5] {
		h.task(a)
	}
	fleetIncs, err := h.st.ListIncidents(store.IncidentFilter{AgentID: store.FleetAgentID})
	require.NoError(t, err)
	require.Empty(t, fleetIncs)
}

func TestShadowRecordsEveryWouldHaveActed(t *testing.T) {
	agents := agentNames(3)
	h := newHarness(t, strings.Replace(safetyPolicy(`{correlation: {percent: 0}}`), "mode: enforce", "mode: shadow", 1), agents...)
	for _, a := range agents {
		h.fail(a)
	}
	for _, a := range agents {
		inc := h.incident(a, "web", store.IncidentSuppressed)
		require.Equal(t, "shadow", lastRule(inc))
		h.noTask(a)
	}
	st, err := h.m.Status(context.Background(), "web", 0)
	require.NoError(t, err)
	require.Len(t, st.WouldHaveActed, 3, "every would-have-acted decision is recorded")
	for _, d := range st.WouldHaveActed {
		require.Equal(t, "exec.run", d.Action)
		require.JSONEq(t, `{"argv":["/bin/true"]}`, string(d.Params))
		require.Contains(t, d.Reason, "shadow mode")
	}
	tasks, err := h.st.ListTasks(store.TaskFilter{})
	require.NoError(t, err)
	require.Empty(t, tasks, "shadow mode sends 0 tasks")
}

func TestFleetWideBudgetAcrossPolicies(t *testing.T) {
	two := safetyPolicy(`{correlation: {percent: 0}}`) + "---\n" +
		strings.Replace(strings.Replace(safetyPolicy(`{correlation: {percent: 0}}`), "metadata: {name: web}", "metadata: {name: web2}", 1), "process: {name: web}", "process: {name: web2}", 1)
	h := newHarnessWith(t, two, func(c *Config) { c.FleetMaxConcurrent = 1 }, "a1")
	h.fail("a1")
	tk := h.task("a1")
	h.result("a1", "web2", crit)
	h.result("a1", "web2", crit)
	inc := h.incident("a1", "web2", store.IncidentSuppressed)
	require.Equal(t, "fleet_max_concurrent", lastRule(inc))
	h.noTask("a1")
	h.update("a1", tk, agentv1.TaskState_TASK_STATE_FAILED, "exit 1")
	tk2 := h.task("a1")
	require.Equal(t, "web2", tk2.GetPolicy(), "the freed fleet slot goes to the other policy's incident")
}

// A correlated hold ends when agents recover, not when they go silent (a
// network split): silent agents still count as failing.
func TestCorrelatedHoldOutlivesSilence(t *testing.T) {
	agents := agentNames(6)
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	h := newHarnessWith(t, safetyPolicy(`{correlation: {percent: 50, window: 1m, minAgents: 3}}`), func(c *Config) { c.Now = clock }, agents...)
	for _, a := range agents[:4] {
		h.result(a, "web", crit)
	}
	for _, a := range agents[:4] {
		h.result(a, "web", crit)
	}
	require.Eventually(t, func() bool {
		st, err := h.m.Status(context.Background(), "web", 0)
		return err == nil && st.Correlated
	}, 5*time.Second, 10*time.Millisecond)
	sweep := func() {
		require.NoError(t, h.m.call(context.Background(), func() error { h.m.sweep(); return nil }))
	}
	mu.Lock()
	now = now.Add(10 * time.Minute)
	mu.Unlock()
	sweep()
	st, err := h.m.Status(context.Background(), "web", 0)
	require.NoError(t, err)
	require.True(t, st.Correlated, "4 silent agents still count")

	// Three recover: 1 of 6 still fails, fewer than minAgents: over.
	for _, a := range agents[:3] {
		h.result(a, "web", ok)
	}
	sweep()
	st, err = h.m.Status(context.Background(), "web", 0)
	require.NoError(t, err)
	require.False(t, st.Correlated)
	fleetIncs, err := h.st.ListIncidents(store.IncidentFilter{AgentID: store.FleetAgentID})
	require.NoError(t, err)
	require.Equal(t, "resolved", fleetIncs[0].Timeline[len(fleetIncs[0].Timeline)-1].Kind, "the fleet incident says the hold ended")
	h.task(agents[3]) // the one still failing is remediated host by host
	for _, a := range append(agents[:3:3], agents[4:]...) {
		h.noTask(a) // the recovering ones are not
	}
}

// Warnings are not failures: they do not make a failure look correlated.
func TestWarningsDoNotCountAsCorrelated(t *testing.T) {
	agents := agentNames(6)
	h := newHarness(t, safetyPolicy(`{correlation: {percent: 50, window: 5m, minAgents: 3}}`), agents...)
	for _, a := range agents[:3] {
		h.result(a, "web", agentv1.CheckStatus_CHECK_STATUS_WARNING)
		h.result(a, "web", agentv1.CheckStatus_CHECK_STATUS_WARNING)
	}
	h.fail(agents[5])
	h.task(agents[5])
}

// A task that succeeded keeps its max_concurrent slot until verified: a
// restart that does not hold must not let the next host be restarted.
func TestSlotHeldUntilVerified(t *testing.T) {
	h := newHarness(t, safetyPolicy(`{maxConcurrent: "1", correlation: {percent: 0}}`), "a1", "a2")
	h.fail("a1")
	h.fail("a2")
	tk := h.task("a1")
	h.update("a1", tk, agentv1.TaskState_TASK_STATE_SUCCEEDED, "")
	h.incident("a1", "web", store.IncidentVerifying)
	h.noTask("a2")
	h.result("a1", "web", ok)
	h.incident("a1", "web", store.IncidentResolved)
	h.task("a2")
}

// No result after a task (the agent is cut off) is no evidence that it
// failed: verification waits instead of acting again.
func TestVerificationWaitsForASilentAgent(t *testing.T) {
	h := newHarness(t, safetyPolicy(`{correlation: {percent: 0}}`), "a1")
	h.fail("a1")
	tk := h.task("a1")
	h.update("a1", tk, agentv1.TaskState_TASK_STATE_SUCCEEDED, "")
	h.incident("a1", "web", store.IncidentVerifying)
	time.Sleep(2500 * time.Millisecond) // verify.within is 1s
	h.noTask("a1")
	inc := h.incident("a1", "web", store.IncidentVerifying)
	require.Contains(t, inc.Timeline[len(inc.Timeline)-1].Message, "no result of web from the agent")
	h.result("a1", "web", ok)
	h.incident("a1", "web", store.IncidentResolved)
}
