// Package scheduler runs the agent's checks, each on its own goroutine, and
// hands every result to a Sink.
//
//	s := scheduler.New(sink, log)          // sink gets every result
//	err := s.Update(specs)                 // replace the whole set of checks
//	defer s.Stop()                         // stop them all and wait
//
// The rules follow Consul's agent/checks: each check has a stop channel and
// runs on its own goroutine; its first run comes after a jitter drawn
// uniformly from [0, interval), so checks started together do not run
// together (unless WithPhase aligns them, as the agent does, so that their
// results share a transaction and a message); the interval defaults to DefaultInterval and is raised to a
// minimum (DefaultMinInterval, see WithMinInterval); the timeout defaults to
// min(interval, DefaultMaxTimeout) and is capped at the interval; a check
// never runs twice at once (a run that outlasts the interval makes the
// check skip ticks, it never overlaps); a panic in a checker becomes an
// UNKNOWN result; output goes through checks.Truncate.
//
// A Checker must honour its context. One that does not return within its
// timeout plus a grace period is reported as UNKNOWN and left to finish on
// its own; the check is not run again until it has, and Stop waits for it.
//
// The sink is called from the checks' goroutines, possibly at the same
// time for different checks, so it must be safe for concurrent use; a slow
// sink delays only the check whose result it is handling. Results of runs
// cut short by Update or Stop are dropped, and once Stop has returned the
// sink is never called again.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"tend.dev/tend/agent/checks"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

const (
	// DefaultInterval is a check's interval when its spec sets none.
	DefaultInterval = 10 * time.Second
	// DefaultMinInterval is the shortest interval a check may have.
	DefaultMinInterval = time.Second
	// DefaultMaxTimeout caps the default timeout (a spec's own timeout is
	// capped at its interval only).
	DefaultMaxTimeout = 10 * time.Second
	// defaultHangGrace is how long after its timeout a run that ignores its
	// context is waited for before it is reported as hung.
	defaultHangGrace = 5 * time.Second
)

// Sink receives the result of one run: the check's spec, the result (its
// output already truncated), when the run started and how long it took.
type Sink func(spec *agentv1.CheckSpec, res checks.Result, started time.Time, took time.Duration)

// Factory builds a Checker from a spec; checks.New is the default.
type Factory func(spec *agentv1.CheckSpec) (checks.Checker, error)

// Option configures a Scheduler.
type Option func(*Scheduler)

// WithMinInterval sets the shortest interval a check may have (default
// DefaultMinInterval); shorter intervals are raised to it. Tests lower it.
func WithMinInterval(d time.Duration) Option {
	return func(s *Scheduler) {
		if d > 0 {
			s.minInterval = d
		}
	}
}

// WithPhase aligns the checks: a check runs when the wall clock is at
// phase plus a whole number of its intervals, so checks with the same
// interval (or intervals that divide each other) run together and their
// results can share one outbox transaction and one message. The agent
// draws the phase at random, so that agents still spread their checks over
// the interval; without this option each check gets its own jitter.
func WithPhase(phase time.Duration) Option {
	return func(s *Scheduler) {
		s.aligned, s.phase = true, phase
	}
}

// WithFactory replaces checks.New as the way specs become Checkers.
func WithFactory(f Factory) Option {
	return func(s *Scheduler) {
		if f != nil {
			s.factory = f
		}
	}
}

// Scheduler runs a set of checks. Its methods are safe for concurrent use.
type Scheduler struct {
	sink        Sink
	log         *slog.Logger
	factory     Factory
	minInterval time.Duration
	hangGrace   time.Duration
	aligned     bool          // WithPhase
	phase       time.Duration // WithPhase

	mu      sync.Mutex
	running map[string]*runner
	stopped bool
	wg      sync.WaitGroup
}

// New returns a Scheduler with no checks; Update gives it some. log may be
// nil (nothing is logged).
func New(sink Sink, log *slog.Logger, opts ...Option) *Scheduler {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Scheduler{
		sink:        sink,
		log:         log,
		factory:     checks.New,
		minInterval: DefaultMinInterval,
		hangGrace:   defaultHangGrace,
		running:     map[string]*runner{},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Update replaces the whole set of checks with specs. Checks whose spec is
// unchanged (proto.Equal) keep running undisturbed; removed and changed ones
// are stopped; new and changed ones start, each after its jitter (a changed
// check also waits for its old version's run, if one is in flight). A spec
// that is invalid (no id, a duplicate id, a bad duration, or an error from
// the factory) is left out and reported in the returned error, which joins
// one error per bad spec; the valid specs run all the same. After Stop,
// Update does nothing and returns an error.
func (s *Scheduler) Update(specs []*agentv1.CheckSpec) error {
	type planned struct {
		spec              *agentv1.CheckSpec
		checker           checks.Checker
		interval, timeout time.Duration
	}
	var errs []error
	want := map[string]*agentv1.CheckSpec{}
	var order []string
	for i, spec := range specs {
		id := spec.GetId()
		switch {
		case spec == nil:
			errs = append(errs, fmt.Errorf("check #%d is nil", i))
			continue
		case id == "":
			errs = append(errs, fmt.Errorf("check #%d (%s) has no id", i, checks.Kind(spec)))
			continue
		case want[id] != nil:
			errs = append(errs, fmt.Errorf("check %q: duplicate id; only the first check with this id runs", id))
			continue
		}
		want[id] = spec
		order = append(order, id)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("scheduler: Update after Stop")
	}

	// Build the new and changed checks first; an invalid spec drops the
	// check (a running old version of it is stopped below).
	var start []planned
	for _, id := range order {
		spec := want[id]
		if old, ok := s.running[id]; ok && proto.Equal(old.spec, spec) {
			continue
		}
		interval, timeout, err := timing(spec, s.minInterval)
		if err == nil {
			var c checks.Checker
			if c, err = s.factory(spec); err == nil {
				start = append(start, planned{proto.Clone(spec).(*agentv1.CheckSpec), c, interval, timeout})
				continue
			}
		}
		errs = append(errs, err)
		delete(want, id)
	}

	// Stop what is gone or changed; a changed check's new version waits
	// for the old one's run to end, so the two never overlap.
	prev := map[string]<-chan struct{}{}
	for id, r := range s.running {
		if spec, ok := want[id]; ok && proto.Equal(r.spec, spec) {
			continue
		}
		r.stop()
		prev[id] = r.done
		delete(s.running, id)
		s.log.Info("check stopped", "check_id", id)
	}
	for _, p := range start {
		s.startRunner(p.spec, p.checker, p.interval, p.timeout, prev[p.spec.GetId()])
	}
	return errors.Join(errs...)
}

// Checks returns the ids of the running checks, sorted.
func (s *Scheduler) Checks() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.running))
	for id := range s.running {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Stop stops every check, cancelling runs in flight, and waits until none
// is running. It may be called more than once.
func (s *Scheduler) Stop() {
	s.mu.Lock()
	s.stopped = true
	for id, r := range s.running {
		r.stop()
		delete(s.running, id)
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// timing works out a spec's interval and timeout: interval DefaultInterval
// when unset, raised to minInterval; timeout min(interval,
// DefaultMaxTimeout) when unset, capped at the interval.
func timing(spec *agentv1.CheckSpec, minInterval time.Duration) (interval, timeout time.Duration, err error) {
	id := spec.GetId()
	if d := spec.GetInterval(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return 0, 0, fmt.Errorf("check %q: interval %v is not a valid positive duration", id, d.AsDuration())
		}
		interval = d.AsDuration()
	}
	if d := spec.GetTimeout(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return 0, 0, fmt.Errorf("check %q: timeout %v is not a valid positive duration", id, d.AsDuration())
		}
		timeout = d.AsDuration()
	}
	if interval == 0 {
		interval = DefaultInterval
	}
	interval = max(interval, minInterval)
	if timeout == 0 {
		timeout = min(interval, DefaultMaxTimeout)
	}
	return interval, min(timeout, interval), nil
}

// runner is one check's goroutine.
type runner struct {
	s        *Scheduler
	spec     *agentv1.CheckSpec
	checker  checks.Checker
	interval time.Duration
	timeout  time.Duration
	log      *slog.Logger

	ctx    context.Context // cancelled by stop
	cancel context.CancelFunc
	done   chan struct{} // closed when the goroutine and its last run have ended

	// inflight is closed when the last run's Check has returned; it stays
	// open while a hung run is still going.
	inflight chan struct{}
}

// startRunner starts a check's goroutine; s.mu is held. If after is not
// nil, the check waits for it to be closed before anything else.
func (s *Scheduler) startRunner(spec *agentv1.CheckSpec, c checks.Checker, interval, timeout time.Duration, after <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	r := &runner{
		s:        s,
		spec:     spec,
		checker:  c,
		interval: interval,
		timeout:  timeout,
		log:      s.log.With("check_id", spec.GetId(), "check_type", checks.Kind(spec)),
		ctx:      ctx,
		cancel:   cancel,
		done:     make(chan struct{}),
	}
	s.running[spec.GetId()] = r
	s.wg.Add(1)
	go r.loop(after)
	r.log.Info("check started", "interval", interval, "timeout", timeout)
}

func (r *runner) stop() { r.cancel() }

func (r *runner) loop(after <-chan struct{}) {
	defer r.s.wg.Done()
	defer func() {
		// done means nothing of this check runs any more, hung run included.
		if r.inflight != nil {
			<-r.inflight
		}
		close(r.done)
	}()
	if after != nil {
		select {
		case <-after:
		case <-r.ctx.Done():
			return
		}
	}
	now := time.Now()
	first := r.s.firstDelay(now, r.interval)
	anchor := now.Add(first)
	t := time.NewTimer(first)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-r.ctx.Done():
			return
		}
		start := time.Now()
		r.runOnce(start)
		// Next run on the first tick of the interval grid after now:
		// a long run skips ticks, it never overlaps the next one. The
		// grid is anchored at the first run, so a late timer does not
		// make the check drift (and aligned checks stay together).
		now := time.Now()
		next := anchor.Add((now.Sub(anchor)/r.interval + 1) * r.interval)
		t.Reset(next.Sub(now))
	}
}

// firstDelay is how long a check started at now waits for its first run:
// until the next tick of the phase grid (WithPhase), else a jitter drawn
// uniformly from [0, interval).
func (s *Scheduler) firstDelay(now time.Time, interval time.Duration) time.Duration {
	if !s.aligned {
		return rand.N(interval)
	}
	return alignDelay(now, s.phase, interval)
}

// alignDelay is the time from now to the next instant (now included) at
// phase plus a whole number of intervals since the Unix epoch.
func alignDelay(now time.Time, phase, interval time.Duration) time.Duration {
	d := (phase.Nanoseconds() - now.UnixNano()) % interval.Nanoseconds()
	if d < 0 {
		d += interval.Nanoseconds()
	}
	return time.Duration(d)
}

// runOnce runs the check once, unless its previous run is still hung, and
// hands the result to the sink.
func (r *runner) runOnce(start time.Time) {
	if r.inflight != nil {
		select {
		case <-r.inflight:
			r.inflight = nil
		default:
			r.log.Warn("check skipped: its previous run has still not returned")
			return
		}
	}
	ctx, cancel := checks.WithTimeout(r.ctx, r.timeout)
	defer cancel()

	type outcome struct {
		res  checks.Result
		took time.Duration
	}
	ch := make(chan outcome, 1)
	inflight := make(chan struct{})
	r.s.wg.Add(1)
	go func() {
		defer r.s.wg.Done()
		defer close(inflight)
		res := r.call(ctx)
		ch <- outcome{res, time.Since(start)}
	}()

	var o outcome
	select {
	case o = <-ch:
	case <-ctx.Done():
		grace := time.NewTimer(r.s.hangGrace)
		select {
		case o = <-ch:
			grace.Stop()
		case <-grace.C:
			r.inflight = inflight
			r.log.Warn("check did not return after its timeout; it will not run again until it does", "timeout", r.timeout)
			o = outcome{
				res: checks.Result{
					Status: agentv1.CheckStatus_CHECK_STATUS_UNKNOWN,
					Output: fmt.Sprintf("check did not return within its timeout of %v (plus %v grace); it is skipped until it does", r.timeout, r.s.hangGrace),
				},
				took: time.Since(start),
			}
		}
	}
	if r.ctx.Err() != nil {
		return // stopped during the run: the result means nothing
	}
	o.res.Output = checks.Truncate(o.res.Output)
	if o.res.Status == agentv1.CheckStatus_CHECK_STATUS_UNSPECIFIED {
		o.res.Status = agentv1.CheckStatus_CHECK_STATUS_UNKNOWN
	}
	if r.s.sink != nil {
		r.s.sink(r.spec, o.res, start, o.took)
	}
}

// call runs the checker, turning a panic into an UNKNOWN result.
func (r *runner) call(ctx context.Context) (res checks.Result) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("check panicked", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			res = checks.Result{
				Status: agentv1.CheckStatus_CHECK_STATUS_UNKNOWN,
				Output: fmt.Sprintf("check panicked: %v", p),
			}
		}
	}()
	return r.checker.Check(ctx)
}
