package state

import (
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Tasks. The agent keeps two things about remediation tasks:
//
//   - the task sequence high-water mark: the highest seq it has accepted. It
//     is written (and fsync'd, as every bbolt commit is) before a task runs,
//     so a task runs at most once even when the agent crashes right after;
//   - the task-update outbox: RUNNING, SUCCEEDED, FAILED and REJECTED
//     reports waiting for the control plane's TaskUpdateAck, in the order
//     they were written. Later states of a task follow the earlier ones (the
//     control plane wants both the start and the end on its timeline).
//
// Task updates are few (a handful per task), so each is its own transaction.

// DefaultTaskUpdatesMax bounds the task-update outbox.
const DefaultTaskUpdatesMax = 10000

// taskUpdatesMax is the bound in force (tests lower it).
var taskUpdatesMax = DefaultTaskUpdatesMax

// maxTaskIDBytes bounds the task id an update may carry (it is part of an
// index key).
const maxTaskIDBytes = 1024

// ErrTaskReplay is returned by AcceptTask for a sequence number at or below
// the high-water mark.
var ErrTaskReplay = errors.New("task sequence number at or below the high-water mark")

// TaskHighWater returns the highest task sequence number accepted so far (0:
// none). It returns 0 if the database cannot be read (closed); AcceptTask is
// what enforces the mark.
func (d *DB) TaskHighWater() uint64 {
	var hw uint64
	_ = d.bolt.View(func(tx *bolt.Tx) error {
		hw = getU64(tx.Bucket(bucketTasks), keyTaskHighWater)
		return nil
	})
	return hw
}

// AcceptTask durably raises the high-water mark to seq and, in the same
// transaction, records task id as in flight (see InterruptedTask) until a
// terminal update of it is written. It fails with ErrTaskReplay, and
// changes nothing, when seq is not above the current mark. Call it before
// executing the task: once it returns nil the task's seq is used up,
// whatever happens next, and if the agent dies before it reports anything
// the next start reports the task as interrupted (it is not run).
func (d *DB) AcceptTask(id string, seq uint64) error {
	if len(id) > maxTaskIDBytes {
		return fmt.Errorf("accept task seq %d: task id is %d bytes, at most %d", seq, len(id), maxTaskIDBytes)
	}
	accepted, err := proto.Marshal(&agentv1.TaskUpdate{TaskId: id, Seq: seq})
	if err != nil {
		return fmt.Errorf("accept task %q: %w", id, err)
	}
	var cur uint64
	err = d.bolt.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTasks)
		cur = getU64(b, keyTaskHighWater)
		if seq <= cur {
			return ErrTaskReplay
		}
		if err := b.Put(keyTaskHighWater, u64(seq)); err != nil {
			return err
		}
		return b.Put(keyTaskInFlight, accepted)
	})
	if errors.Is(err, ErrTaskReplay) {
		return fmt.Errorf("accept task seq %d: high-water mark is %d: %w", seq, cur, ErrTaskReplay)
	}
	if err != nil {
		return fmt.Errorf("accept task seq %d: persist high-water mark in %s: %w", seq, d.path, err)
	}
	return nil
}

// TaskUpdateEntry is one pending task update with its outbox key (increasing
// in write order).
type TaskUpdateEntry struct {
	Key    uint64
	Update *agentv1.TaskUpdate
}

func terminal(s agentv1.TaskState) bool {
	switch s {
	case agentv1.TaskState_TASK_STATE_SUCCEEDED, agentv1.TaskState_TASK_STATE_FAILED,
		agentv1.TaskState_TASK_STATE_EXPIRED, agentv1.TaskState_TASK_STATE_REJECTED:
		return true
	}
	return false
}

func indexKey(taskID string, key uint64) []byte {
	b := make([]byte, 0, 2+len(taskID)+8)
	b = binary.BigEndian.AppendUint16(b, uint16(len(taskID)))
	b = append(b, taskID...)
	return binary.BigEndian.AppendUint64(b, key)
}

func indexPrefix(taskID string) []byte {
	b := make([]byte, 0, 2+len(taskID))
	b = binary.BigEndian.AppendUint16(b, uint16(len(taskID)))
	return append(b, taskID...)
}

// PutTaskUpdate appends u to the task-update outbox, durably. A RUNNING
// update also records the task as in flight (see InterruptedTask); a
// terminal update of that task clears it. When the outbox holds more than
// DefaultTaskUpdatesMax updates, the oldest non-terminal ones are dropped
// first, then the oldest; drops are counted (TaskUpdateStats).
func (d *DB) PutTaskUpdate(u *agentv1.TaskUpdate) error {
	switch {
	case u == nil:
		return errors.New("put task update: nil update")
	case len(u.GetTaskId()) > maxTaskIDBytes:
		return fmt.Errorf("put task update: task id is %d bytes, at most %d", len(u.GetTaskId()), maxTaskIDBytes)
	case u.GetState() == agentv1.TaskState_TASK_STATE_UNSPECIFIED:
		return fmt.Errorf("put task update for task %q: no state", u.GetTaskId())
	}
	val, err := proto.Marshal(u)
	if err != nil {
		return fmt.Errorf("put task update for task %q: %w", u.GetTaskId(), err)
	}
	err = d.bolt.Update(func(tx *bolt.Tx) error {
		tb := tx.Bucket(bucketTasks)
		ub := tx.Bucket(bucketTaskUpdates)
		ub.FillPercent = fillPercent
		key := max(getU64(tb, keyNextUpdate), 1)
		if err := ub.Put(u64(key), val); err != nil {
			return err
		}
		if err := tx.Bucket(bucketTaskUpdateIndex).Put(indexKey(u.GetTaskId(), key), nil); err != nil {
			return err
		}
		if err := tb.Put(keyNextUpdate, u64(key+1)); err != nil {
			return err
		}
		if err := tb.Put(keyUpdatesPending, u64(getU64(tb, keyUpdatesPending)+1)); err != nil {
			return err
		}
		if err := trackInFlight(tb, u); err != nil {
			return err
		}
		if err := trimTaskUpdates(tx); err != nil {
			return err
		}
		d.noteTaskUpdates(tx)
		return nil
	})
	if err != nil {
		return fmt.Errorf("put task update for task %q (%s) into %s: %w", u.GetTaskId(), u.GetState(), d.path, err)
	}
	return nil
}

func trackInFlight(tb *bolt.Bucket, u *agentv1.TaskUpdate) error {
	switch {
	case u.GetState() == agentv1.TaskState_TASK_STATE_RUNNING:
		b, err := proto.Marshal(&agentv1.TaskUpdate{TaskId: u.GetTaskId(), Seq: u.GetSeq(), At: u.GetAt()})
		if err != nil {
			return err
		}
		return tb.Put(keyTaskInFlight, b)
	case terminal(u.GetState()):
		if cur := tb.Get(keyTaskInFlight); cur != nil {
			f := &agentv1.TaskUpdate{}
			if proto.Unmarshal(cur, f) != nil || f.GetTaskId() == u.GetTaskId() {
				return tb.Delete(keyTaskInFlight)
			}
		}
	}
	return nil
}

// InterruptedTask returns the task that was accepted (AcceptTask) or
// RUNNING and has no terminal update yet, or nil: its TaskId and Seq, and
// for a task that was RUNNING the time it started (At; nil for a task that
// was accepted and never started). After a restart that is a task the agent
// was killed in the middle of; report it (a terminal PutTaskUpdate clears
// it). It is never run again.
func (d *DB) InterruptedTask() (*agentv1.TaskUpdate, error) {
	var out *agentv1.TaskUpdate
	err := d.bolt.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketTasks).Get(keyTaskInFlight)
		if v == nil {
			return nil
		}
		out = &agentv1.TaskUpdate{}
		return proto.Unmarshal(v, out)
	})
	if err != nil {
		return nil, fmt.Errorf("read the task in flight from %s: %w", d.path, err)
	}
	return out, nil
}

// trimTaskUpdates drops updates while the outbox is over its bound: the
// oldest non-terminal update first, else the oldest.
func trimTaskUpdates(tx *bolt.Tx) error {
	tb := tx.Bucket(bucketTasks)
	ub := tx.Bucket(bucketTaskUpdates)
	ib := tx.Bucket(bucketTaskUpdateIndex)
	pending := getU64(tb, keyUpdatesPending)
	if pending <= uint64(taskUpdatesMax) {
		return nil
	}
	excess := pending - uint64(taskUpdatesMax)
	type victim struct {
		key     uint64
		taskID  string
		damaged bool
	}
	// One pass: non-terminal (and damaged) updates in order, then terminal
	// ones; the first excess of that order go.
	var first, second []victim
	c := ub.Cursor()
	for k, v := c.First(); k != nil && uint64(len(first)) < excess; k, v = c.Next() {
		u := &agentv1.TaskUpdate{}
		key := binary.BigEndian.Uint64(k)
		switch {
		case proto.Unmarshal(v, u) != nil:
			first = append(first, victim{key: key, damaged: true})
		case !terminal(u.GetState()):
			first = append(first, victim{key: key, taskID: u.GetTaskId()})
		case uint64(len(second)) < excess:
			second = append(second, victim{key: key, taskID: u.GetTaskId()})
		}
	}
	victims := append(first, second...)
	victims = victims[:min(uint64(len(victims)), excess)]
	for _, v := range victims {
		if err := ub.Delete(u64(v.key)); err != nil {
			return err
		}
		if !v.damaged {
			if err := ib.Delete(indexKey(v.taskID, v.key)); err != nil {
				return err
			}
		}
	}
	n := uint64(len(victims))
	if err := tb.Put(keyUpdatesPending, u64(pending-n)); err != nil {
		return err
	}
	return tb.Put(keyUpdatesDropped, u64(getU64(tb, keyUpdatesDropped)+n))
}

// PendingTaskUpdates returns every update waiting for an ack, oldest first.
func (d *DB) PendingTaskUpdates() ([]*agentv1.TaskUpdate, error) {
	es, err := d.TaskUpdatesAfter(0, 0)
	if err != nil {
		return nil, err
	}
	out := make([]*agentv1.TaskUpdate, len(es))
	for i, e := range es {
		out[i] = e.Update
	}
	return out, nil
}

// TaskUpdatesAfter returns up to max pending updates whose key is above
// after, oldest first (max <= 0: no limit). Keys only grow, so a sender
// that remembers the last key it sent sends each update once per session.
func (d *DB) TaskUpdatesAfter(after uint64, max int) ([]TaskUpdateEntry, error) {
	if d.noTaskUpdates.Load() {
		return nil, nil // the usual case: no read transaction
	}
	var out []TaskUpdateEntry
	err := d.bolt.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketTaskUpdates).Cursor()
		for k, v := c.Seek(u64(after + 1)); k != nil && (max <= 0 || len(out) < max); k, v = c.Next() {
			u := &agentv1.TaskUpdate{}
			if err := proto.Unmarshal(v, u); err != nil {
				return fmt.Errorf("task update %d is damaged: %w", binary.BigEndian.Uint64(k), err)
			}
			out = append(out, TaskUpdateEntry{Key: binary.BigEndian.Uint64(k), Update: u})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read task updates from %s: %w", d.path, err)
	}
	return out, nil
}

// noteTaskUpdates records, once tx commits, whether the task update bucket
// is empty (TaskUpdatesAfter then reads nothing). Every transaction that
// writes the bucket calls it last.
func (d *DB) noteTaskUpdates(tx *bolt.Tx) {
	k, _ := tx.Bucket(bucketTaskUpdates).Cursor().First()
	empty := k == nil
	tx.OnCommit(func() { d.noTaskUpdates.Store(empty) })
}

// AckTaskUpdate forgets the oldest pending update of taskID in state, and
// every earlier update of the same task: the control plane has recorded
// them. Acking an update that is not pending does nothing.
func (d *DB) AckTaskUpdate(taskID string, state agentv1.TaskState) error {
	if len(taskID) > maxTaskIDBytes {
		return nil
	}
	err := d.bolt.Update(func(tx *bolt.Tx) error {
		tb := tx.Bucket(bucketTasks)
		ub := tx.Bucket(bucketTaskUpdates)
		ib := tx.Bucket(bucketTaskUpdateIndex)
		prefix := indexPrefix(taskID)
		var keys []uint64
		found := false
		c := ib.Cursor()
		for k, _ := c.Seek(prefix); k != nil && len(k) == len(prefix)+8 && string(k[:len(prefix)]) == string(prefix); k, _ = c.Next() {
			key := binary.BigEndian.Uint64(k[len(prefix):])
			keys = append(keys, key)
			u := &agentv1.TaskUpdate{}
			if v := ub.Get(u64(key)); v != nil && proto.Unmarshal(v, u) == nil && u.GetState() == state {
				found = true
				break
			}
		}
		if !found {
			return errNoChange
		}
		var n uint64
		for _, key := range keys {
			if ub.Get(u64(key)) != nil {
				if err := ub.Delete(u64(key)); err != nil {
					return err
				}
				n++
			}
			if err := ib.Delete(indexKey(taskID, key)); err != nil {
				return err
			}
		}
		pending := getU64(tb, keyUpdatesPending)
		if err := tb.Put(keyUpdatesPending, u64(pending-min(n, pending))); err != nil {
			return err
		}
		d.noteTaskUpdates(tx)
		return nil
	})
	if errors.Is(err, errNoChange) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ack task update %q (%s) in %s: %w", taskID, state, d.path, err)
	}
	return nil
}

// TaskUpdateStats returns the number of task updates waiting for an ack and
// the number dropped because the outbox was full since the database was
// created.
func (d *DB) TaskUpdateStats() (pending, droppedTotal uint64) {
	_ = d.bolt.View(func(tx *bolt.Tx) error {
		tb := tx.Bucket(bucketTasks)
		pending, droppedTotal = getU64(tb, keyUpdatesPending), getU64(tb, keyUpdatesDropped)
		return nil
	})
	return pending, droppedTotal
}

// ResetTaskHighWater starts a new task sequence space. Call it only when
// the agent takes a new identity (re-enrollment): the control plane numbers
// tasks per agent id, and tasks signed for the old id are refused by the
// addressee check whatever their seq.
func (d *DB) ResetTaskHighWater() error {
	return d.bolt.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTasks).Put(keyTaskHighWater, u64(0))
	})
}
