package tasks

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// A captured task (envelope bytes that a genuine agent already executed)
// replayed where the same-agent and after-restart tests do not reach: to
// another agent, and after the task's expiry, both to the agent that ran it
// and to one that has lost its high-water mark. It is executed 0 times
// beyond the first, each refusal with its reason. (Same agent again:
// TestSameEnvelopeAgainIsReplay; after a crash and restart:
// TestReplayAfterCrashAndRestart.)
func TestCapturedTaskReplays(t *testing.T) {
	var clock atomic.Int64 // the victim's clock, as UnixNano
	clock.Store(t0.UnixNano())
	victim := startRunner(t, func(h *harness) {
		h.cfg.Now = func() time.Time { return time.Unix(0, clock.Load()).UTC() }
	})
	tk := nginxTask(t, 1) // for agentID, expires at t0+5m
	captured := victim.seal(t, tk)
	victim.deliver(captured)
	require.Equal(t, []agentv1.TaskState{stRunning, stSucceeded}, states(victim.waitUpdates(t, 2)))
	require.Equal(t, 1, victim.exec.executions(), "the genuine delivery runs")

	afterExpiry := tk.GetExpiresAt().AsTime().Add(DefaultMaxSkew + time.Minute)

	t.Run("to another agent", func(t *testing.T) {
		// Same control plane (same pinned key), another agent: its own
		// database, nothing accepted yet.
		other := startRunner(t, func(h *harness) {
			h.key = victim.key
			h.cfg.AgentID = "agent-2"
		})
		other.deliver(captured)
		u := other.waitUpdates(t, 1)[0]
		require.Equal(t, stRejected, u.GetState())
		require.Equal(t, "task-1", u.GetTaskId())
		require.Equal(t, "task for agent agent-1, this is agent agent-2", u.GetReason())
		require.Zero(t, other.exec.executions(), "executed 0 times on the other agent")
		require.Zero(t, other.db.TaskHighWater(), "a task for someone else moves nothing")
	})

	t.Run("after its expiry, to the agent that ran it", func(t *testing.T) {
		clock.Store(afterExpiry.UnixNano())
		victim.deliver(captured)
		us := victim.waitUpdates(t, 3)
		require.Equal(t, stRejected, us[2].GetState())
		require.Equal(t, "task-1", us[2].GetTaskId())
		require.Equal(t, "replay: seq 1 ≤ high-water mark 1", us[2].GetReason())
		require.Equal(t, 1, victim.exec.executions(), "executed 0 times beyond the first")
	})

	t.Run("after its expiry, to the same agent id without its high-water mark", func(t *testing.T) {
		// The agent's state database is gone (reinstalled with its
		// identity kept, or a copy of its identity elsewhere): the seq no
		// longer protects it, the expiry still does.
		wiped := startRunner(t, func(h *harness) {
			h.key = victim.key
			h.cfg.Now = func() time.Time { return afterExpiry }
		})
		wiped.deliver(captured)
		u := wiped.waitUpdates(t, 1)[0]
		require.Equal(t, agentv1.TaskState_TASK_STATE_EXPIRED, u.GetState(), "too late: expired, not rejected")
		require.Equal(t, "task-1", u.GetTaskId())
		require.Contains(t, u.GetReason(), "expired at 2025-06-01T12:05:00Z")
		require.Zero(t, wiped.exec.executions(), "executed 0 times")
		require.Zero(t, wiped.db.TaskHighWater())
	})
}
