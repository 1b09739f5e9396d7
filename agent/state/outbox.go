package state

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// The outbox holds results until the control plane acknowledges them. Keys
// are sequence numbers; they are assigned in increasing order and only ever
// removed from the oldest end (ack, or drop when full), so the outbox is
// always one contiguous run of sequence numbers. The next sequence number is
// persisted and never goes backwards, also when the outbox is empty.

// fillPercent keeps the outbox's pages nearly full: keys are appended in
// order, so bbolt's default split at 50% would waste half of every page.
const fillPercent = 0.95

type appendReq struct {
	results []*agentv1.CheckResult
	done    chan error
}

// Append writes results to the outbox, setting each result's Seq to the next
// per-agent sequence number, in argument order. It returns once the results
// are durable. Concurrent calls are committed together in one transaction.
// When the outbox is full the oldest results are dropped and counted (see
// Stats). A result that cannot be marshalled fails its own call only, and
// uses up no sequence number.
func (d *DB) Append(results ...*agentv1.CheckResult) error {
	if len(results) == 0 {
		return nil
	}
	for i, r := range results {
		if r == nil {
			return fmt.Errorf("append: result %d is nil", i)
		}
	}
	req := &appendReq{results: results, done: make(chan error, 1)}
	d.closeMu.RLock()
	if d.closed {
		d.closeMu.RUnlock()
		return ErrClosed
	}
	d.appendCh <- req
	d.closeMu.RUnlock()
	return <-req.done
}

// committer turns queued appends into group commits until Close. It also
// writes deferred acks (Options.AckDelay): with the next group commit, or
// on their own when none comes within AckDelay, and at Close.
func (d *DB) committer() {
	defer close(d.done)
	var timer *time.Timer
	var timerC <-chan time.Time
	stopTimer := func() {
		if timer != nil {
			timer.Stop()
			timer, timerC = nil, nil
		}
	}
	for {
		select {
		case req, ok := <-d.appendCh:
			if !ok {
				stopTimer()
				d.flushAcks()
				return
			}
			reqs := []*appendReq{req}
			n := len(req.results)
		drain:
			for n < maxResultsPerCommit {
				select {
				case r, ok := <-d.appendCh:
					if !ok {
						break drain
					}
					reqs = append(reqs, r)
					n += len(r.results)
				default:
					break drain
				}
			}
			d.commit(reqs)
			if !d.acksDeferred() {
				stopTimer()
			}
		case <-d.ackCh:
			if timer == nil && d.acksDeferred() {
				timer = time.NewTimer(d.ackDelay)
				timerC = timer.C
			}
		case <-timerC:
			timer, timerC = nil, nil
			d.flushAcks()
		}
	}
}

// acksDeferred reports whether an ack is waiting to be written.
func (d *DB) acksDeferred() bool {
	d.statsMu.Lock()
	defer d.statsMu.Unlock()
	return d.ackWant > d.ackDone
}

// ackWanted returns the deferred ack to write with the next transaction,
// or 0 if there is none.
func (d *DB) ackWanted() uint64 {
	d.statsMu.Lock()
	defer d.statsMu.Unlock()
	if d.ackWant > d.ackDone {
		return d.ackWant
	}
	return 0
}

// flushAcks writes a deferred ack in a transaction of its own. On failure
// the ack stays deferred: the next group commit or Ack tries again.
func (d *DB) flushAcks() {
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	want := d.ackWanted()
	if want == 0 {
		return
	}
	var st outboxStats
	err := d.bolt.Update(func(tx *bolt.Tx) error {
		var err error
		st, _, err = applyAck(tx, want)
		return err
	})
	if err == nil {
		d.setStatsAcked(st, want)
	}
}

// applyAck deletes every result with seq <= through and moves the next
// sequence number past through, within tx. It returns the outbox counters
// and whether anything changed.
func applyAck(tx *bolt.Tx, through uint64) (outboxStats, bool, error) {
	ob := tx.Bucket(bucketOutbox)
	om := tx.Bucket(bucketOutboxMeta)
	st := readOutboxStats(om)
	n, err := deleteOldest(ob, ^uint64(0), through)
	if err != nil {
		return st, false, err
	}
	changed := n > 0
	if n > 0 {
		st.pending -= min(n, st.pending)
		if err := om.Put(keyPending, u64(st.pending)); err != nil {
			return st, false, err
		}
	}
	if through >= st.next {
		st.next = through + 1
		if err := om.Put(keyNextSeq, u64(st.next)); err != nil {
			return st, false, err
		}
		changed = true
	}
	return st, changed, nil
}

func (d *DB) commit(reqs []*appendReq) {
	errs := make([]error, len(reqs))
	var st outboxStats
	d.inCommit.Store(int64(len(reqs)))
	d.writeMu.Lock()
	ackWant := d.ackWanted()
	err := d.bolt.Update(func(tx *bolt.Tx) error {
		if ackWant > 0 {
			// A deferred ack goes first, so that it neither counts
			// towards OutboxMax nor shows up as dropped.
			if _, _, err := applyAck(tx, ackWant); err != nil {
				return err
			}
		}
		ob := tx.Bucket(bucketOutbox)
		ob.FillPercent = fillPercent
		om := tx.Bucket(bucketOutboxMeta)
		next := max(getU64(om, keyNextSeq), 1)
		pending := getU64(om, keyPending)
		for i, req := range reqs {
			errs[i] = nil
			enc := make([][]byte, len(req.results))
			for j, r := range req.results {
				r.Seq = next + uint64(j)
				b, err := proto.Marshal(r)
				if err != nil {
					errs[i] = fmt.Errorf("append: result %d (check %q) cannot be stored: %w", j, r.GetCheckId(), err)
					break
				}
				enc[j] = b
			}
			if errs[i] != nil {
				clearSeqs(req.results)
				continue
			}
			for j, b := range enc {
				if err := ob.Put(u64(next+uint64(j)), b); err != nil {
					return fmt.Errorf("put result %d: %w", next+uint64(j), err)
				}
			}
			next += uint64(len(enc))
			pending += uint64(len(enc))
		}
		if err := om.Put(keyNextSeq, u64(next)); err != nil {
			return err
		}
		if err := om.Put(keyPending, u64(pending)); err != nil {
			return err
		}
		var err error
		st, err = d.trim(tx)
		return err
	})
	if err == nil {
		d.setStatsAcked(st, ackWant)
	}
	d.inCommit.Store(0)
	d.writeMu.Unlock()
	d.commits.Add(1)
	for i, req := range reqs {
		e := errs[i]
		if err != nil {
			clearSeqs(req.results)
			e = fmt.Errorf("append to outbox %s: %w", d.path, err)
		}
		req.done <- e
	}
}

func clearSeqs(rs []*agentv1.CheckResult) {
	for _, r := range rs {
		r.Seq = 0
	}
}

// readOutboxStats reads the outbox counters from its meta bucket.
func readOutboxStats(om *bolt.Bucket) outboxStats {
	return outboxStats{
		pending: getU64(om, keyPending),
		dropped: getU64(om, keyDroppedTotal),
		next:    max(getU64(om, keyNextSeq), 1),
	}
}

// trim drops the oldest results while the outbox holds more than its bound,
// adds them to the dropped total, and returns the outbox counters.
func (d *DB) trim(tx *bolt.Tx) (outboxStats, error) {
	ob := tx.Bucket(bucketOutbox)
	om := tx.Bucket(bucketOutboxMeta)
	st := readOutboxStats(om)
	if st.pending <= d.max {
		return st, nil
	}
	excess := st.pending - d.max
	n, err := deleteOldest(ob, excess, ^uint64(0))
	if err != nil {
		return st, err
	}
	st.pending -= n
	st.dropped += n
	if err := om.Put(keyPending, u64(st.pending)); err != nil {
		return st, err
	}
	if err := om.Put(keyDroppedTotal, u64(st.dropped)); err != nil {
		return st, err
	}
	return st, nil
}

// deleteOldest deletes at most limit results with seq <= through, oldest
// first, and returns how many it deleted.
func deleteOldest(ob *bolt.Bucket, limit, through uint64) (uint64, error) {
	var n uint64
	c := ob.Cursor()
	for k, _ := c.First(); k != nil && n < limit; {
		seq := binary.BigEndian.Uint64(k)
		if seq > through {
			break
		}
		if err := c.Delete(); err != nil {
			return n, fmt.Errorf("delete result %d: %w", seq, err)
		}
		n++
		// Re-seek rather than Next: a cursor's position after Delete is
		// not reliable in bbolt.
		k, _ = c.Seek(u64(seq + 1))
	}
	return n, nil
}

// Pending returns up to max results with seq > afterSeq, in seq order. A
// max of 0 or less means no limit.
func (d *DB) Pending(afterSeq uint64, max int) ([]*agentv1.CheckResult, error) {
	d.statsMu.Lock()
	afterSeq = maxU64(afterSeq, d.ackWant) // acknowledged, deletion deferred
	next := d.stats.next
	d.statsMu.Unlock()
	if afterSeq+1 >= next {
		// Nothing appended after afterSeq (the usual case when the send
		// loop wakes up): no read transaction. stats.next is set before
		// an Append returns.
		return nil, nil
	}
	var out []*agentv1.CheckResult
	err := d.bolt.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketOutbox).Cursor()
		for k, v := c.Seek(u64(afterSeq + 1)); k != nil && (max <= 0 || len(out) < max); k, v = c.Next() {
			r := &agentv1.CheckResult{}
			if err := proto.Unmarshal(v, r); err != nil {
				return fmt.Errorf("result %d in the outbox is damaged: %w", binary.BigEndian.Uint64(k), err)
			}
			out = append(out, r)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read outbox %s: %w", d.path, err)
	}
	return out, nil
}

var errNoChange = errors.New("no change")

// Ack deletes every result with seq <= throughSeq: the control plane has
// them. If throughSeq is at or beyond the next sequence number (the control
// plane knows results this database has forgotten, e.g. after a restore from
// backup), the next sequence number moves past it at once, so that new
// results are never mistaken for duplicates. Otherwise the deletion may be
// deferred (Options.AckDelay): Pending and Stats skip the results at once,
// and the file forgets them with the next transaction.
func (d *DB) Ack(throughSeq uint64) error {
	if throughSeq == 0 {
		return nil
	}
	d.statsMu.Lock()
	if throughSeq <= d.ackWant {
		d.statsMu.Unlock()
		return nil // already acknowledged
	}
	deferred := d.ackDelay > 0 && throughSeq < d.stats.next
	if deferred {
		d.ackWant = throughSeq
	}
	d.statsMu.Unlock()
	if deferred {
		d.closeMu.RLock()
		closed := d.closed
		d.closeMu.RUnlock()
		if !closed {
			select {
			case d.ackCh <- struct{}{}:
			default:
			}
			return nil
		}
	}
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	var st outboxStats
	err := d.bolt.Update(func(tx *bolt.Tx) error {
		var changed bool
		var err error
		st, changed, err = applyAck(tx, throughSeq)
		if err == nil && !changed {
			return errNoChange // roll back: nothing to write, no fsync
		}
		return err
	})
	if errors.Is(err, errNoChange) {
		d.statsMu.Lock()
		d.ackWant = max(d.ackWant, throughSeq)
		d.ackDone = max(d.ackDone, throughSeq)
		d.statsMu.Unlock()
		return nil
	}
	if err != nil {
		return fmt.Errorf("ack outbox %s through %d: %w", d.path, throughSeq, err)
	}
	d.setStatsAcked(st, throughSeq)
	return nil
}

// Stats returns the number of results in the outbox, the number dropped
// because it was full since the database was created, and the sequence
// number the next appended result will get. It does no I/O.
func (d *DB) Stats() (pending, droppedTotal, nextSeq uint64) {
	d.statsMu.Lock()
	defer d.statsMu.Unlock()
	st := d.stats
	if d.ackWant > d.ackDone && st.pending > 0 {
		// The outbox holds the contiguous seqs next-pending .. next-1;
		// those up to ackWant are acknowledged, their deletion deferred.
		first := st.next - st.pending
		if last := min(d.ackWant, st.next-1); last >= first {
			st.pending -= min(last-first+1, st.pending)
		}
	}
	return st.pending, st.dropped, st.next
}

func (d *DB) setStats(st outboxStats) {
	d.statsMu.Lock()
	d.stats = st
	d.statsMu.Unlock()
}

// setStatsAcked sets the counters after a transaction that also wrote the
// acks through acked (0: none).
func (d *DB) setStatsAcked(st outboxStats, acked uint64) {
	d.statsMu.Lock()
	d.stats = st
	d.ackDone = max(d.ackDone, acked)
	d.ackWant = max(d.ackWant, acked)
	d.statsMu.Unlock()
}

func maxU64(a, b uint64) uint64 { return max(a, b) }
