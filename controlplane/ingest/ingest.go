// Package ingest is the group committer between the agent streams and the
// store: many agents' result batches become one store.CommitResults call,
// which is one transaction and one fsync.
//
// One goroutine takes the first waiting batch, then everything else already
// queued (up to Options.MaxBatchResults results), commits the group, and
// answers every batch of it. Under load batches pile up while a commit runs,
// so groups grow by themselves; with no load a batch is committed at once.
// Commits start at most every Options.MinInterval (15 ms): on a fast disk a
// commit takes a few milliseconds, and without pacing a steady stream of
// small batches would become hundreds of tiny commits per second, each two
// fsyncs. Paced, a busy control plane makes at most ~67 commits per second
// (~133 fsyncs, leaving room under 200/s for the other writers), however
// many results it takes in, and a quiet one still commits a lone batch at
// once.
// The queue is bounded (Options.MaxQueuedResults): when it is full,
// submitting waits for the next group to leave it, so an overloaded control
// plane stops reading the agents' streams (gRPC flow control then slows the
// agents) instead of queueing without bound in memory.
// A batch is acknowledged only once it is durable: if the commit fails,
// every batch of the group gets the error, and the agents resend (the store
// drops what it already has by sequence number).
package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"tend.dev/tend/controlplane/store"
)

// ErrStopped is returned for batches submitted after Stop began.
var ErrStopped = errors.New("ingest committer stopped")

// Defaults for Options.
const (
	DefaultMaxBatchResults  = 4096
	DefaultMaxQueuedResults = 8 * DefaultMaxBatchResults
	DefaultMinInterval      = 15 * time.Millisecond
)

// Options tune the committer. The zero value is the production setting.
type Options struct {
	// MaxBatchResults caps the results of one group commit (default 4096).
	// A single batch larger than that is committed on its own.
	MaxBatchResults int
	// MaxQueuedResults bounds the results waiting for a commit (default
	// DefaultMaxQueuedResults, ~1.6 s at 20,000 results/s; negative: no
	// bound). A batch that does not fit waits in Submit or SubmitAsync
	// until it does; a batch larger than the bound goes into an empty
	// queue.
	MaxQueuedResults int
	// MaxDelay is how long the committer may wait after the first batch
	// for more to arrive before committing. Default 0: no added latency;
	// groups form naturally while the previous commit runs.
	MaxDelay time.Duration
	// MinInterval is the least time between the starts of two commits
	// (default DefaultMinInterval; negative: no pacing). A batch that
	// arrives when the last commit started longer ago is committed at
	// once; otherwise it waits, with whatever else arrives, for the
	// interval to pass (or for a full group). It bounds the commits, and so
	// the fsyncs, per second: 2 fsyncs per commit at most 2/MinInterval.
	MinInterval time.Duration
	// Registerer receives the committer's metrics (tend_ingest_*); nil
	// means they are not registered.
	Registerer prometheus.Registerer
}

// Committer groups result batches into store commits. Create it with New,
// then Start it; Stop drains it.
type Committer struct {
	st   store.Store
	opts Options
	log  *slog.Logger
	m    metrics

	wake chan struct{} // one token: something was queued, or Stop began
	done chan struct{} // closed when the loop has exited

	mu       sync.Mutex
	queue    []request
	queued   int       // results in queue
	waiting  []*waiter // batches waiting for room in the queue, in order
	started  bool
	stopping bool

	lastStart time.Time // when the last commit started (loop only)
}

type request struct {
	batch store.ResultBatch
	done  func(store.CommitOutcome, error)
}

// waiter is a batch waiting for room in the full queue. Batches are let in
// in the order they came, so that no stream waits longer than the others.
type waiter struct {
	req      request
	admitted chan struct{} // closed once req is in the queue, or refused
	err      error         // why it was refused (ErrStopped); set before admitted closes
}

// New returns a committer writing to st. It registers its metrics with
// opts.Registerer (and panics, like prometheus.MustRegister, if they are
// already registered there). log may be nil.
func New(st store.Store, opts Options, log *slog.Logger) *Committer {
	if opts.MaxBatchResults <= 0 {
		opts.MaxBatchResults = DefaultMaxBatchResults
	}
	switch {
	case opts.MaxQueuedResults == 0:
		opts.MaxQueuedResults = DefaultMaxQueuedResults
	case opts.MaxQueuedResults < 0:
		opts.MaxQueuedResults = math.MaxInt
	}
	if opts.MaxDelay < 0 {
		opts.MaxDelay = 0
	}
	switch {
	case opts.MinInterval == 0:
		opts.MinInterval = DefaultMinInterval
	case opts.MinInterval < 0:
		opts.MinInterval = 0
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Committer{
		st:   st,
		opts: opts,
		log:  log,
		m:    newMetrics(opts.Registerer),
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
}

// Start starts the commit loop. Batches submitted before Start wait for it.
// Start after Start or Stop does nothing.
func (c *Committer) Start() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started {
		return
	}
	c.started = true
	go c.run()
}

// Stop refuses new batches (ErrStopped), commits everything already queued,
// answers it, and returns when the loop has exited. It is safe to call more
// than once, and without Start.
func (c *Committer) Stop() {
	c.mu.Lock()
	first := !c.stopping
	c.stopping = true
	notStarted := !c.started
	c.started = true
	if first {
		for _, w := range c.waiting {
			w.err = ErrStopped
			close(w.admitted)
		}
		c.waiting = nil
	}
	c.mu.Unlock()
	if notStarted {
		go c.run()
	}
	if first {
		c.signal()
	}
	<-c.done
}

// Submit queues one batch (waiting for room in a full queue) and waits
// until it is durable. It returns the
// store's outcome; an error means the batch must not be acknowledged: the
// commit failed (every batch of its group gets that error), the store
// refused this batch alone (the outcome's Err, e.g. store.ErrRevoked), the
// committer is stopped (ErrStopped), or ctx ended first (ctx.Err(); the
// batch may still be committed later, which a resend then finds as
// duplicates).
func (c *Committer) Submit(ctx context.Context, b store.ResultBatch) (store.CommitOutcome, error) {
	if err := ctx.Err(); err != nil {
		return store.CommitOutcome{}, err
	}
	type answer struct {
		out store.CommitOutcome
		err error
	}
	ch := make(chan answer, 1)
	if err := c.enqueue(ctx, b, func(out store.CommitOutcome, err error) { ch <- answer{out, err} }); err != nil {
		return store.CommitOutcome{}, err
	}
	select {
	case a := <-ch:
		return a.out, a.err
	case <-ctx.Done():
		return store.CommitOutcome{}, ctx.Err()
	}
}

// SubmitAsync queues one batch without waiting for its commit: done is
// called exactly once, with what Submit would return, once the batch is
// durable or has failed. done runs on the committer's goroutine (or, if the
// committer is stopped, on a new goroutine), so it must be quick and must
// not block: queue the acknowledgement, do not send it on the network from
// there. SubmitAsync blocks only while the queue is full
// (Options.MaxQueuedResults): called from a stream's reader, that stops
// reading the stream, which is the back-pressure on the agent.
func (c *Committer) SubmitAsync(b store.ResultBatch, done func(store.CommitOutcome, error)) {
	if err := c.enqueue(context.Background(), b, done); err != nil {
		go done(store.CommitOutcome{}, err)
	}
}

// enqueue queues the batch once it fits, after the batches already
// waiting: ErrStopped if the committer stopped, ctx's error if ctx ended
// first.
func (c *Committer) enqueue(ctx context.Context, b store.ResultBatch, done func(store.CommitOutcome, error)) error {
	// Encode on the caller's goroutine, not the committer's: the one
	// commit goroutine is the ingest's serial path.
	store.EncodeResults(&b)
	req := request{batch: b, done: done}
	c.mu.Lock()
	if c.stopping {
		c.mu.Unlock()
		return ErrStopped
	}
	if len(c.waiting) == 0 && c.fits(len(b.Results)) {
		c.push(req)
		c.mu.Unlock()
		c.signal()
		return nil
	}
	w := &waiter{req: req, admitted: make(chan struct{})}
	c.waiting = append(c.waiting, w)
	c.m.waitedForRoom.Inc()
	c.mu.Unlock()
	select {
	case <-w.admitted:
		return w.err
	case <-ctx.Done():
	}
	c.mu.Lock()
	if i := slices.Index(c.waiting, w); i >= 0 {
		c.waiting = slices.Delete(c.waiting, i, i+1)
		c.admit() // the ones behind it may fit
		c.mu.Unlock()
		return ctx.Err()
	}
	c.mu.Unlock()
	<-w.admitted // it got in (or was refused) just before ctx ended
	return w.err
}

// fits reports whether n more results fit in the queue: a batch larger
// than the bound goes into an empty queue. Call with mu held.
func (c *Committer) fits(n int) bool {
	return c.queued == 0 || c.queued+n <= c.opts.MaxQueuedResults
}

// push queues a request. Call with mu held.
func (c *Committer) push(r request) {
	c.queue = append(c.queue, r)
	c.queued += len(r.batch.Results)
	c.m.queueDepth.Set(float64(len(c.queue)))
}

// admit moves the waiting batches that now fit into the queue, in order.
// Call with mu held.
func (c *Committer) admit() {
	n := 0
	for n < len(c.waiting) && !c.stopping && c.fits(len(c.waiting[n].req.batch.Results)) {
		c.push(c.waiting[n].req)
		close(c.waiting[n].admitted)
		n++
	}
	if n > 0 {
		rest := copy(c.waiting, c.waiting[n:])
		clear(c.waiting[rest:])
		c.waiting = c.waiting[:rest]
		c.signal()
	}
}

func (c *Committer) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *Committer) run() {
	defer close(c.done)
	for {
		group, ok := c.next()
		if !ok {
			return
		}
		c.commit(group)
	}
}

// next waits for work and takes the next group, or returns false once the
// committer is stopping and the queue is empty.
func (c *Committer) next() ([]request, bool) {
	c.mu.Lock()
	for len(c.queue) == 0 {
		if c.stopping {
			c.mu.Unlock()
			return nil, false
		}
		c.mu.Unlock()
		<-c.wake
		c.mu.Lock()
	}
	if c.opts.MaxDelay > 0 && !c.stopping && c.queued < c.opts.MaxBatchResults {
		c.mu.Unlock()
		c.linger(time.Now().Add(c.opts.MaxDelay))
		c.mu.Lock()
	}
	if next := c.lastStart.Add(c.opts.MinInterval); !c.stopping && c.queued < c.opts.MaxBatchResults && time.Now().Before(next) {
		c.mu.Unlock()
		c.m.paced.Inc()
		c.linger(next)
		c.mu.Lock()
	}
	n, results := 1, len(c.queue[0].batch.Results)
	for n < len(c.queue) && results+len(c.queue[n].batch.Results) <= c.opts.MaxBatchResults {
		results += len(c.queue[n].batch.Results)
		n++
	}
	group := make([]request, n)
	copy(group, c.queue)
	rest := copy(c.queue, c.queue[n:])
	clear(c.queue[rest:]) // let the answered requests be collected
	c.queue = c.queue[:rest]
	c.queued -= results
	c.admit()
	c.m.queueDepth.Set(float64(len(c.queue)))
	c.mu.Unlock()
	return group, true
}

// linger waits until the deadline, or until the queue fills a group.
func (c *Committer) linger(deadline time.Time) {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
			return
		case <-c.wake:
			c.mu.Lock()
			full := c.stopping || c.queued >= c.opts.MaxBatchResults
			c.mu.Unlock()
			if full {
				c.signal() // keep the token for the main loop
				return
			}
		}
	}
}

func (c *Committer) commit(group []request) {
	batches := make([]store.ResultBatch, len(group))
	results := 0
	for i, r := range group {
		batches[i] = r.batch
		results += len(r.batch.Results)
	}
	start := time.Now()
	c.lastStart = start
	outs, err := c.commitResults(batches)
	c.m.commitSeconds.Observe(time.Since(start).Seconds())
	c.m.commits.Inc()
	c.m.batchResults.Observe(float64(results))
	if err == nil && len(outs) != len(batches) {
		err = fmt.Errorf("store returned %d outcomes for %d batches", len(outs), len(batches))
	}
	if err != nil {
		c.m.commitErrors.Inc()
		err = fmt.Errorf("commit %d results of %d batches: %w", results, len(batches), err)
		c.log.Warn("group commit failed; the agents will resend", "batches", len(batches), "results", results, "err", err)
		for _, r := range group {
			r.done(store.CommitOutcome{}, err)
		}
		return
	}
	for i, r := range group {
		out := outs[i]
		if out.Err != nil {
			c.m.refused.Inc()
		}
		c.m.stored.Add(float64(out.Stored))
		c.m.duplicates.Add(float64(out.Duplicates))
		r.done(out, out.Err)
	}
}

// commitResults calls the store, turning a panic into an error so that the
// waiters are answered and the loop goes on.
func (c *Committer) commitResults(batches []store.ResultBatch) (outs []store.CommitOutcome, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("store panicked: %v", p)
		}
	}()
	return c.st.CommitResults(batches)
}

type metrics struct {
	stored, duplicates, commits, commitErrors, refused, paced prometheus.Counter
	waitedForRoom                                             prometheus.Counter
	commitSeconds, batchResults                               prometheus.Histogram
	queueDepth                                                prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) metrics {
	m := metrics{
		stored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tend_ingest_results_total", Help: "Results stored (new, not duplicates).",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tend_ingest_duplicates_total", Help: "Results received again and skipped (at or below the agent's high-water mark).",
		}),
		commits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tend_ingest_commits_total", Help: "Group commits (store transactions), failed ones included.",
		}),
		commitErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tend_ingest_commit_errors_total", Help: "Group commits that failed; their batches were not acknowledged.",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tend_ingest_refused_batches_total", Help: "Batches the store refused on their own (unknown or revoked agent, invalid result).",
		}),
		paced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tend_ingest_paced_total", Help: "Commits that waited for the minimum interval since the previous commit (gathering more batches).",
		}),
		waitedForRoom: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tend_ingest_queue_full_waits_total", Help: "Times a batch waited for room in the full commit queue (back-pressure on its stream).",
		}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tend_ingest_commit_seconds", Help: "Duration of one group commit, fsync included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5 ms .. 4 s
		}),
		batchResults: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tend_ingest_batch_results", Help: "Results per group commit.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14), // 1 .. 8192
		}),
		queueDepth: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tend_ingest_queue_depth", Help: "Batches waiting for a group commit.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.stored, m.duplicates, m.commits, m.commitErrors, m.refused, m.paced, m.waitedForRoom, m.commitSeconds, m.batchResults, m.queueDepth)
	}
	return m
}
