package stream

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

func (f *fakeCP) receivedTaskUpdates() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := []string{}
	for _, u := range f.taskUpdates {
		out = append(out, u.GetTaskId()+"/"+u.GetState().String())
	}
	return out
}

func putTaskUpdate(t *testing.T, h *harness, id string, s agentv1.TaskState) {
	t.Helper()
	require.NoError(t, h.db.PutTaskUpdate(&agentv1.TaskUpdate{TaskId: id, Seq: 1, State: s, At: timestamppb.Now()}))
	h.c.NotifyTasks()
}

func (h *harness) taskUpdatesPending() uint64 {
	p, _ := h.db.TaskUpdateStats()
	return p
}

const (
	tsRunning   = agentv1.TaskState_TASK_STATE_RUNNING
	tsSucceeded = agentv1.TaskState_TASK_STATE_SUCCEEDED
	tsRejected  = agentv1.TaskState_TASK_STATE_REJECTED
)

func TestTaskUpdatesDeliveredAndAcked(t *testing.T) {
	cp := newFakeCP(t)
	// A long poll: only NotifyTasks can make the update go out quickly.
	h := start(t, cp, func(c *Config) { c.PollInterval = time.Hour })
	require.Eventually(t, h.c.Connected, waitFor, tick)

	putTaskUpdate(t, h, "t1", tsRunning)
	putTaskUpdate(t, h, "t1", tsSucceeded)
	putTaskUpdate(t, h, "t2", tsRejected)
	require.Eventually(t, func() bool { return len(cp.receivedTaskUpdates()) == 3 }, waitFor, tick)
	require.Equal(t, []string{"t1/TASK_STATE_RUNNING", "t1/TASK_STATE_SUCCEEDED", "t2/TASK_STATE_REJECTED"}, cp.receivedTaskUpdates(), "in the order written")
	require.Eventually(t, func() bool { return h.taskUpdatesPending() == 0 }, waitFor, tick, "acked updates leave the outbox")
	require.Eventually(t, func() bool { return h.c.Stats().TaskUpdatesAcked == 3 }, waitFor, tick)
	require.Equal(t, uint64(3), h.c.Stats().TaskUpdatesSent)
}

func TestTaskUpdatesResentAfterReconnectUntilAcked(t *testing.T) {
	cp := newFakeCP(t)
	cp.set(func(f *fakeCP) { f.holdTaskAcks = true })
	h := start(t, cp, nil)
	require.Eventually(t, h.c.Connected, waitFor, tick)

	putTaskUpdate(t, h, "t1", tsRunning)
	putTaskUpdate(t, h, "t1", tsSucceeded)
	require.Eventually(t, func() bool { return len(cp.receivedTaskUpdates()) == 2 }, waitFor, tick)
	require.Never(t, func() bool { return len(cp.receivedTaskUpdates()) > 2 }, 100*time.Millisecond, tick, "sent once per session")
	require.Equal(t, uint64(2), h.taskUpdatesPending(), "nothing leaves the outbox unacked")

	// Not acked: the next session sends them again.
	cp.drop()
	require.Eventually(t, func() bool { return len(cp.receivedTaskUpdates()) == 4 }, waitFor, tick)
	require.Equal(t, uint64(2), h.taskUpdatesPending())

	// Written while disconnected: sent on connect, with the unacked ones.
	cp.set(func(f *fakeCP) {
		f.refuse = true
		f.holdTaskAcks = false
	})
	cp.drop()
	require.Eventually(t, func() bool { return !h.c.Connected() }, waitFor, tick)
	putTaskUpdate(t, h, "t2", tsRejected)
	cp.set(func(f *fakeCP) { f.refuse = false })
	require.Eventually(t, func() bool { return h.taskUpdatesPending() == 0 }, waitFor, tick)
	got := cp.receivedTaskUpdates()
	require.Equal(t, []string{"t1/TASK_STATE_RUNNING", "t1/TASK_STATE_SUCCEEDED", "t2/TASK_STATE_REJECTED"}, got[len(got)-3:])

	// Once acked, never sent again.
	n := len(got)
	cp.drop()
	require.Eventually(t, func() bool { return h.c.Stats().Connects >= 4 }, waitFor, tick)
	require.Never(t, func() bool { return len(cp.receivedTaskUpdates()) > n }, 100*time.Millisecond, tick)
}

func TestHelloCarriesTaskHighWater(t *testing.T) {
	cp := newFakeCP(t)
	// The mark is raised before the client runs: a session started
	// before it would rightly say 0.
	h := start(t, cp, func(c *Config) { require.NoError(t, c.DB.AcceptTask("task-42", 42)) })
	require.Eventually(t, h.c.Connected, waitFor, tick)
	cp.mu.Lock()
	defer cp.mu.Unlock()
	require.Equal(t, uint64(42), cp.hellos[len(cp.hellos)-1].GetTaskSeqHighWater())
}

func TestTaskUpdatesResentOnSameSessionWithoutAck(t *testing.T) {
	// The control plane could not record the update and did not ack it:
	// the agent sends it again without reconnecting.
	cp := newFakeCP(t)
	cp.set(func(f *fakeCP) { f.holdTaskAcks = true })
	h := start(t, cp, func(c *Config) { c.TaskResendInterval = 50 * time.Millisecond })
	require.Eventually(t, h.c.Connected, waitFor, tick)
	putTaskUpdate(t, h, "t1", tsRunning)
	putTaskUpdate(t, h, "t1", tsSucceeded)
	require.Eventually(t, func() bool { return len(cp.receivedTaskUpdates()) >= 4 }, waitFor, tick)
	got := cp.receivedTaskUpdates()
	require.Equal(t, []string{"t1/TASK_STATE_RUNNING", "t1/TASK_STATE_SUCCEEDED", "t1/TASK_STATE_RUNNING", "t1/TASK_STATE_SUCCEEDED"}, got[:4])
	require.Zero(t, h.c.Stats().Reconnects)

	cp.set(func(f *fakeCP) { f.holdTaskAcks = false })
	require.Eventually(t, func() bool { return h.taskUpdatesPending() == 0 }, waitFor, tick)
	n := len(cp.receivedTaskUpdates())
	require.Never(t, func() bool { return len(cp.receivedTaskUpdates()) > n }, 150*time.Millisecond, tick, "acked: never sent again")
}
