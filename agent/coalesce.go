package agent

import (
	"sync"
	"time"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// DefaultResultLinger is how long a passing result may wait to be appended
// to the outbox together with others (Config.ResultLinger).
const DefaultResultLinger = time.Second

// coalesceMax is how many waiting results are appended at once without
// waiting for the linger (the stream's default batch size).
const coalesceMax = 100

// coalescer groups check results into outbox transactions. Each
// transaction is fsync'd, and with checks on independent schedules every
// result used to be one: most of an idle agent's CPU. A passing result
// that does not change its check's status waits up to linger for others;
// a result that is not OK, the first of a check, or a change of status is
// appended at once, together with those waiting before it. Results are
// appended in the order they arrived, and only durable results are handed
// on (after): the stream sends nothing that is not in the outbox.
type coalescer struct {
	append func(...*agentv1.CheckResult) error
	// after gets each appended group, in order, once it is durable.
	after func([]*agentv1.CheckResult)
	// failed gets a group whose append failed.
	failed func([]*agentv1.CheckResult, error)
	linger time.Duration
	max    int

	wmu sync.Mutex // held while a group is written: groups are written in order

	mu      sync.Mutex
	last    map[string]agentv1.CheckStatus // last status of each check
	pending []*agentv1.CheckResult
	timer   *time.Timer
	closed  bool
}

func newCoalescer(linger time.Duration, appendFn func(...*agentv1.CheckResult) error, after func([]*agentv1.CheckResult), failed func([]*agentv1.CheckResult, error)) *coalescer {
	return &coalescer{append: appendFn, after: after, failed: failed, linger: linger, max: coalesceMax, last: map[string]agentv1.CheckStatus{}}
}

// urgent reports whether a result goes to the outbox at once: it is not
// OK, or its check's status changed (or is new).
func urgent(st agentv1.CheckStatus, prev agentv1.CheckStatus, seen bool) bool {
	return st != agentv1.CheckStatus_CHECK_STATUS_OK || !seen || prev != st
}

// Add takes one result. It returns once the result is durable, unless it
// waits for others (then a timer or a later result writes it).
func (c *coalescer) Add(r *agentv1.CheckResult) {
	c.mu.Lock()
	prev, seen := c.last[r.GetCheckId()]
	c.last[r.GetCheckId()] = r.GetStatus()
	c.pending = append(c.pending, r)
	now := c.closed || c.linger <= 0 || len(c.pending) >= c.max || urgent(r.GetStatus(), prev, seen)
	if !now && c.timer == nil {
		c.timer = time.AfterFunc(c.linger, c.Flush)
	}
	c.mu.Unlock()
	if now {
		c.Flush()
	}
}

// Flush appends every waiting result in one transaction.
func (c *coalescer) Flush() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	rs := c.pending
	c.pending = nil
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	c.mu.Unlock()
	if len(rs) == 0 {
		return
	}
	if err := c.append(rs...); err == nil {
		c.after(rs)
		return
	} else if len(rs) == 1 {
		c.failed(rs, err)
		return
	}
	// One bad result (one that cannot be marshalled) fails the whole
	// call: append them one by one so that it loses only itself.
	for _, r := range rs {
		if err := c.append(r); err != nil {
			c.failed([]*agentv1.CheckResult{r}, err)
			continue
		}
		c.after([]*agentv1.CheckResult{r})
	}
}

// Close writes what is waiting; later results are appended at once.
func (c *coalescer) Close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.Flush()
}
