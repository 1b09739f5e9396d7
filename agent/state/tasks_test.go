package state

import (
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

const (
	running   = agentv1.TaskState_TASK_STATE_RUNNING
	succeeded = agentv1.TaskState_TASK_STATE_SUCCEEDED
	failed    = agentv1.TaskState_TASK_STATE_FAILED
	rejected  = agentv1.TaskState_TASK_STATE_REJECTED
)

func upd(id string, seq uint64, s agentv1.TaskState) *agentv1.TaskUpdate {
	return &agentv1.TaskUpdate{TaskId: id, Seq: seq, State: s, At: timestamppb.Now(), Output: id + " " + s.String()}
}

type idState struct {
	id string
	s  agentv1.TaskState
}

func pendingUpdates(t *testing.T, d *DB) []idState {
	t.Helper()
	us, err := d.PendingTaskUpdates()
	require.NoError(t, err)
	out := []idState{}
	for _, u := range us {
		out = append(out, idState{u.GetTaskId(), u.GetState()})
	}
	return out
}

func TestTaskHighWaterPersistsAndRefusesReplay(t *testing.T) {
	d, _ := testDB(t, Options{})
	require.Zero(t, d.TaskHighWater())
	require.NoError(t, d.AcceptTask("task-5", 5))
	require.Equal(t, uint64(5), d.TaskHighWater())

	err := d.AcceptTask("task-5", 5)
	require.ErrorIs(t, err, ErrTaskReplay)
	require.ErrorContains(t, err, "seq 5: high-water mark is 5")
	require.ErrorIs(t, d.AcceptTask("task-3", 3), ErrTaskReplay)
	require.ErrorIs(t, d.AcceptTask("task-0", 0), ErrTaskReplay)
	require.Equal(t, uint64(5), d.TaskHighWater(), "a refused seq changes nothing")

	require.NoError(t, d.AcceptTask("task-9", 9), "gaps are fine")
	d = reopen(t, d, Options{})
	require.Equal(t, uint64(9), d.TaskHighWater(), "the mark survives a restart")
	require.ErrorIs(t, d.AcceptTask("task-9", 9), ErrTaskReplay)
	require.NoError(t, d.AcceptTask("task-10", 10))
}

func TestAcceptTaskConcurrentOnlyOneWins(t *testing.T) {
	d, _ := testDB(t, Options{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if d.AcceptTask("task-1", 1) == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	require.Equal(t, 1, wins, "a seq is accepted exactly once")
}

func TestAcceptTaskOnClosedDBFails(t *testing.T) {
	d, err := Open(t.TempDir()+"/agent.db", Options{})
	require.NoError(t, err)
	require.NoError(t, d.Close())
	require.Error(t, d.AcceptTask("task-1", 1), "no durable mark, no execution")
	require.Zero(t, d.TaskHighWater())
}

func TestTaskUpdateOutboxOrderAndAck(t *testing.T) {
	d, _ := testDB(t, Options{})
	require.NoError(t, d.PutTaskUpdate(upd("a", 1, running)))
	require.NoError(t, d.PutTaskUpdate(upd("b", 2, rejected)))
	require.NoError(t, d.PutTaskUpdate(upd("a", 1, succeeded)))
	require.NoError(t, d.PutTaskUpdate(upd("c", 3, running)))
	require.Equal(t, []idState{{"a", running}, {"b", rejected}, {"a", succeeded}, {"c", running}}, pendingUpdates(t, d))

	es, err := d.TaskUpdatesAfter(0, 2)
	require.NoError(t, err)
	require.Len(t, es, 2)
	rest, err := d.TaskUpdatesAfter(es[1].Key, 0)
	require.NoError(t, err)
	require.Len(t, rest, 2)
	require.Greater(t, rest[0].Key, es[1].Key)
	want := upd("a", 1, succeeded)
	want.At = rest[0].Update.GetAt()
	require.True(t, proto.Equal(want, rest[0].Update), "round-trips: %v", rest[0].Update)

	// Acking the terminal state of a forgets its earlier RUNNING too.
	require.NoError(t, d.AckTaskUpdate("a", succeeded))
	require.Equal(t, []idState{{"b", rejected}, {"c", running}}, pendingUpdates(t, d))

	// Acking something not pending does nothing.
	require.NoError(t, d.AckTaskUpdate("a", succeeded))
	require.NoError(t, d.AckTaskUpdate("c", succeeded))
	require.NoError(t, d.AckTaskUpdate("zzz", running))
	require.Equal(t, []idState{{"b", rejected}, {"c", running}}, pendingUpdates(t, d))

	// Acking RUNNING leaves a later state of the same task.
	require.NoError(t, d.PutTaskUpdate(upd("c", 3, failed)))
	require.NoError(t, d.AckTaskUpdate("c", running))
	require.Equal(t, []idState{{"b", rejected}, {"c", failed}}, pendingUpdates(t, d))

	pending, dropped := d.TaskUpdateStats()
	require.Equal(t, [2]uint64{2, 0}, [2]uint64{pending, dropped})

	d = reopen(t, d, Options{})
	require.Equal(t, []idState{{"b", rejected}, {"c", failed}}, pendingUpdates(t, d), "pending updates survive a restart")
	require.NoError(t, d.AckTaskUpdate("b", rejected))
	require.NoError(t, d.AckTaskUpdate("c", failed))
	require.Empty(t, pendingUpdates(t, d))
	pending, _ = d.TaskUpdateStats()
	require.Zero(t, pending)

	// Keys keep growing after the outbox was emptied and reopened.
	require.NoError(t, d.PutTaskUpdate(upd("d", 4, running)))
	es, err = d.TaskUpdatesAfter(rest[1].Key, 0)
	require.NoError(t, err)
	require.Len(t, es, 1)
	require.NoError(t, d.Check())
}

func TestAckTakesTheOldestOfDuplicates(t *testing.T) {
	// Updates without a recoverable task id share the id "": an ack must
	// only forget the one it acknowledges (the oldest), not later ones
	// that may not even have been sent.
	d, _ := testDB(t, Options{})
	require.NoError(t, d.PutTaskUpdate(upd("", 0, rejected)))
	require.NoError(t, d.PutTaskUpdate(upd("x", 1, rejected)))
	require.NoError(t, d.PutTaskUpdate(upd("", 0, rejected)))
	require.NoError(t, d.AckTaskUpdate("", rejected))
	require.Equal(t, []idState{{"x", rejected}, {"", rejected}}, pendingUpdates(t, d))

	// Task ids that are prefixes of each other do not mix.
	require.NoError(t, d.PutTaskUpdate(upd("x1", 2, rejected)))
	require.NoError(t, d.AckTaskUpdate("x", rejected))
	require.Equal(t, []idState{{"", rejected}, {"x1", rejected}}, pendingUpdates(t, d))
}

func TestTaskUpdateOutboxBoundDropsNonTerminalFirst(t *testing.T) {
	old := taskUpdatesMax
	taskUpdatesMax = 4
	t.Cleanup(func() { taskUpdatesMax = old })
	d, _ := testDB(t, Options{})
	require.NoError(t, d.PutTaskUpdate(upd("t1", 1, rejected)))
	require.NoError(t, d.PutTaskUpdate(upd("t2", 2, running)))
	require.NoError(t, d.PutTaskUpdate(upd("t2", 2, succeeded)))
	require.NoError(t, d.PutTaskUpdate(upd("t3", 3, running)))
	require.NoError(t, d.PutTaskUpdate(upd("t3", 3, failed)))
	require.Equal(t, []idState{{"t1", rejected}, {"t2", succeeded}, {"t3", running}, {"t3", failed}}, pendingUpdates(t, d))
	require.NoError(t, d.PutTaskUpdate(upd("t4", 4, rejected)))
	require.Equal(t, []idState{{"t1", rejected}, {"t2", succeeded}, {"t3", failed}, {"t4", rejected}}, pendingUpdates(t, d))
	// Only terminal ones left: the oldest goes.
	require.NoError(t, d.PutTaskUpdate(upd("t5", 5, rejected)))
	require.Equal(t, []idState{{"t2", succeeded}, {"t3", failed}, {"t4", rejected}, {"t5", rejected}}, pendingUpdates(t, d))
	pending, dropped := d.TaskUpdateStats()
	require.Equal(t, [2]uint64{4, 3}, [2]uint64{pending, dropped})

	// The index was trimmed with the updates: acks still work.
	require.NoError(t, d.AckTaskUpdate("t3", failed))
	require.Equal(t, []idState{{"t2", succeeded}, {"t4", rejected}, {"t5", rejected}}, pendingUpdates(t, d))
	require.NoError(t, d.bolt.View(func(tx *bolt.Tx) error {
		require.Equal(t, 3, tx.Bucket(bucketTaskUpdateIndex).Stats().KeyN)
		return nil
	}))
}

func TestPutTaskUpdateRefusesBadInput(t *testing.T) {
	d, _ := testDB(t, Options{})
	require.Error(t, d.PutTaskUpdate(nil))
	require.Error(t, d.PutTaskUpdate(&agentv1.TaskUpdate{TaskId: "a"}), "no state")
	require.Error(t, d.PutTaskUpdate(upd(string(make([]byte, 2000)), 1, rejected)), "huge id")
	require.Error(t, d.PutTaskUpdate(upd("bad\xff", 1, rejected)), "invalid UTF-8")
	require.Empty(t, pendingUpdates(t, d))
}

func TestInterruptedTask(t *testing.T) {
	d, _ := testDB(t, Options{})
	got, err := d.InterruptedTask()
	require.NoError(t, err)
	require.Nil(t, got)

	require.NoError(t, d.PutTaskUpdate(upd("t1", 7, running)))
	d = reopen(t, d, Options{}) // "crash" while t1 runs
	got, err = d.InterruptedTask()
	require.NoError(t, err)
	require.Equal(t, "t1", got.GetTaskId())
	require.Equal(t, uint64(7), got.GetSeq())

	// A terminal update of another task does not clear it; its own does.
	require.NoError(t, d.PutTaskUpdate(upd("other", 8, rejected)))
	got, err = d.InterruptedTask()
	require.NoError(t, err)
	require.NotNil(t, got)
	require.NoError(t, d.PutTaskUpdate(upd("t1", 7, failed)))
	got, err = d.InterruptedTask()
	require.NoError(t, err)
	require.Nil(t, got)
}

// A task accepted and never started (the agent died in between) is in
// flight too, without a start time; its RUNNING update gives it one, and a
// rejection after the accept clears it.
func TestAcceptedTaskIsInFlight(t *testing.T) {
	d, _ := testDB(t, Options{})
	require.NoError(t, d.AcceptTask("t1", 3))
	d = reopen(t, d, Options{}) // "crash" right after the accept
	got, err := d.InterruptedTask()
	require.NoError(t, err)
	require.Equal(t, "t1", got.GetTaskId())
	require.Equal(t, uint64(3), got.GetSeq())
	require.Nil(t, got.GetAt(), "never started")

	require.NoError(t, d.PutTaskUpdate(upd("t1", 3, running)))
	got, err = d.InterruptedTask()
	require.NoError(t, err)
	require.NotNil(t, got.GetAt(), "started")
	require.NoError(t, d.PutTaskUpdate(upd("t1", 3, failed)))
	got, err = d.InterruptedTask()
	require.NoError(t, err)
	require.Nil(t, got)

	require.NoError(t, d.AcceptTask("t2", 4))
	require.NoError(t, d.PutTaskUpdate(upd("t2", 4, rejected)))
	got, err = d.InterruptedTask()
	require.NoError(t, err)
	require.Nil(t, got, "a rejection after the accept is the task's end")

	require.ErrorIs(t, d.AcceptTask("t3", 4), ErrTaskReplay)
	got, err = d.InterruptedTask()
	require.NoError(t, err)
	require.Nil(t, got, "a refused accept records nothing")
	require.Error(t, d.AcceptTask(string(make([]byte, 2000)), 5), "huge id")
	require.Equal(t, uint64(4), d.TaskHighWater())
}

func TestTaskBucketsAddedToOldFiles(t *testing.T) {
	// A file written before the task buckets existed gets them on open,
	// with a zero high-water mark, and keeps its results.
	d, _ := testDB(t, Options{})
	require.NoError(t, d.Append(results(2)...))
	require.NoError(t, d.bolt.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketTasks, bucketTaskUpdates, bucketTaskUpdateIndex} {
			if err := tx.DeleteBucket(b); err != nil {
				return fmt.Errorf("delete %s: %w", b, err)
			}
		}
		return nil
	}))
	d = reopen(t, d, Options{})
	require.Zero(t, d.TaskHighWater())
	require.NoError(t, d.AcceptTask("task-1", 1))
	require.NoError(t, d.PutTaskUpdate(upd("a", 1, running)))
	pending, _, _ := d.Stats()
	require.Equal(t, uint64(2), pending)
}

// TestReadShortcuts: TaskUpdatesAfter and Pending answer "nothing" without
// a read transaction when nothing is there; they must never miss anything
// that is, including after an ack empties the bucket and after a reopen.
func TestReadShortcuts(t *testing.T) {
	d, _ := testDB(t, Options{})
	es, err := d.TaskUpdatesAfter(0, 10)
	require.NoError(t, err)
	require.Empty(t, es)
	require.NoError(t, d.PutTaskUpdate(upd("a", 1, running)))
	require.Equal(t, []idState{{"a", running}}, pendingUpdates(t, d))
	require.NoError(t, d.AckTaskUpdate("a", running))
	require.Empty(t, pendingUpdates(t, d))
	require.NoError(t, d.PutTaskUpdate(upd("a", 1, succeeded)))
	require.Equal(t, []idState{{"a", succeeded}}, pendingUpdates(t, d))
	d = reopen(t, d, Options{})
	require.Equal(t, []idState{{"a", succeeded}}, pendingUpdates(t, d), "seen after a reopen")

	rs, err := d.Pending(0, 10)
	require.NoError(t, err)
	require.Empty(t, rs)
	require.NoError(t, d.Append(result("x"), result("y")))
	rs, err = d.Pending(0, 10)
	require.NoError(t, err)
	require.Len(t, rs, 2)
	rs, err = d.Pending(rs[0].GetSeq(), 10)
	require.NoError(t, err)
	require.Len(t, rs, 1)
	rs, err = d.Pending(rs[0].GetSeq(), 10)
	require.NoError(t, err)
	require.Empty(t, rs)
	d = reopen(t, d, Options{})
	rs, err = d.Pending(0, 10)
	require.NoError(t, err)
	require.Len(t, rs, 2, "seen after a reopen")
}
