// Package fleet is the control plane's registry of agents: who is enrolled,
// who is connected on which stream, and liveness, which the server owns.
//
// Liveness follows Nomad's heartbeat design: every agent has one timer. Any
// message from the agent resets it; if it fires, the agent is marked down.
// The timer's length is the heartbeat TTL plus a grace period. The TTL grows
// with the fleet (so that the fleet as a whole sends at most
// MaxHeartbeatsPerSecond heartbeats) and never drops below MinTTL; agents are
// told to heartbeat every TTL/2. Heartbeats only touch memory, and never cause
// a write of their own: status changes are written right away (in one batched
// transaction for all the agents that changed meanwhile), each with the
// agent's lastSeen; a connected agent's lastSeen, which only heartbeats move,
// is written with its next status change (a disconnect, or down) and at
// shutdown. After a crash, an agent that was connected therefore shows the
// time it connected until it connects again or is marked down.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"tend.dev/tend/controlplane/store"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Defaults for Config.
const (
	DefaultMinTTL                 = 10 * time.Second
	DefaultGrace                  = 5 * time.Second
	DefaultMaxHeartbeatsPerSecond = 2000
	DefaultFlushInterval          = 30 * time.Second
	// DefaultRestartGrace covers the agents' reconnect backoff (at most
	// 120 s plus 20% jitter) after a control-plane restart.
	DefaultRestartGrace = 150 * time.Second
)

// Config configures a Registry.
type Config struct {
	Store                  store.Store
	MinTTL                 time.Duration
	Grace                  time.Duration
	MaxHeartbeatsPerSecond float64
	FlushInterval          time.Duration
	// RestartGrace is how long agents that were connected before a
	// control-plane restart have to reconnect before they are marked down
	// (plus a random stagger of up to one TTL).
	RestartGrace time.Duration
	Log          *slog.Logger
	// OnChange is called (without locks held) after an agent's status changes.
	OnChange func(a store.Agent)
}

// ErrStopping is returned by Attach once Stop was called.
var ErrStopping = errors.New("control plane shutting down: reconnect shortly")

// ErrRevoked is returned when a revoked agent tries to attach.
var ErrRevoked = errors.New("this agent was revoked ('tendctl delete agent'): to bring the host back, stop tend-agent, remove DATA_DIR/agent.pem and start it once with a new --token")

type entry struct {
	agent    store.Agent
	session  *Session
	timer    *time.Timer
	deadline time.Time // when the agent is down unless seen again
	// dirty: status or metadata changed: flush now. seenDirty: only
	// lastSeen changed (heartbeats): written with the next flush of this
	// agent, or at shutdown, never on its own.
	dirty, seenDirty bool
}

// Registry is the set of agents known to the control plane.
type Registry struct {
	cfg    Config
	log    *slog.Logger
	mu     sync.Mutex
	agents map[string]*entry
	// toFlush holds the ids of the dirty entries, so that a flush does not
	// scan the whole fleet (a reconnect storm flushes many times).
	toFlush map[string]struct{}
	// sorted is every entry by name, for List; rebuilt when agents are
	// added (entries are never removed, names never change).
	sorted []*entry
	kick   chan struct{}
	stop   chan struct{}
	wg     sync.WaitGroup
	closed bool
	ttl    time.Duration
	ttlAt  time.Time
}

// New loads every agent from the store. Agents that were connected when the
// control plane stopped are marked disconnected, and get
// max(TTL + grace, RestartGrace) plus a random stagger of up to one TTL to
// come back: long enough for their reconnect backoff, and spread so a
// restart never marks the whole fleet down at once.
func New(cfg Config) (*Registry, error) {
	if cfg.MinTTL <= 0 {
		cfg.MinTTL = DefaultMinTTL
	}
	if cfg.Grace <= 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.MaxHeartbeatsPerSecond <= 0 {
		cfg.MaxHeartbeatsPerSecond = DefaultMaxHeartbeatsPerSecond
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.RestartGrace <= 0 {
		cfg.RestartGrace = DefaultRestartGrace
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	r := &Registry{
		cfg:     cfg,
		log:     cfg.Log,
		agents:  map[string]*entry{},
		toFlush: map[string]struct{}{},
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
	}
	agents, err := cfg.Store.ListAgents()
	if err != nil {
		return nil, fmt.Errorf("load agents: %w", err)
	}
	live := 0
	for _, a := range agents {
		if !a.Revoked {
			live++
		}
	}
	ttl := r.ttlFor(live)
	window := max(ttl+cfg.Grace, cfg.RestartGrace)
	for _, a := range agents {
		e := &entry{agent: a}
		r.agents[a.ID] = e
		if a.Revoked || a.Status == store.StatusDown {
			continue
		}
		if a.Status == store.StatusConnected {
			e.agent.Status = store.StatusDisconnected
			r.markLocked(a.ID, e)
		}
		stagger := time.Duration(rand.Int64N(int64(ttl)))
		r.startTimerLocked(a.ID, e, window+stagger)
	}
	r.wg.Add(1)
	go r.flusher()
	r.signal()
	return r, nil
}

// ttlFor is the heartbeat TTL for a fleet of n agents.
func (r *Registry) ttlFor(n int) time.Duration {
	ttl := time.Duration(float64(n) / r.cfg.MaxHeartbeatsPerSecond * float64(time.Second))
	if ttl < r.cfg.MinTTL {
		ttl = r.cfg.MinTTL
	}
	return ttl
}

// liveLocked counts agents that are not revoked.
func (r *Registry) liveLocked() int {
	n := 0
	for _, e := range r.agents {
		if !e.agent.Revoked {
			n++
		}
	}
	return n
}

// TTL is the current heartbeat TTL.
func (r *Registry) TTL() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ttlLocked()
}

// ttlLocked caches the TTL for a second: counting is O(fleet).
func (r *Registry) ttlLocked() time.Duration {
	now := time.Now()
	if now.Sub(r.ttlAt) > time.Second || r.ttl == 0 {
		r.ttl = r.ttlFor(r.liveLocked())
		r.ttlAt = now
	}
	return r.ttl
}

// Grace is added to the TTL before an agent is marked down.
func (r *Registry) Grace() time.Duration { return r.cfg.Grace }

// HeartbeatInterval is how often agents are told to heartbeat: TTL/2.
func (r *Registry) HeartbeatInterval() time.Duration { return r.TTL() / 2 }

func (r *Registry) startTimerLocked(id string, e *entry, d time.Duration) {
	e.deadline = time.Now().Add(d)
	if e.timer != nil {
		e.timer.Reset(d)
		return
	}
	e.timer = time.AfterFunc(d, func() { r.expire(id) })
}

// markLocked marks an entry for the next flush.
func (r *Registry) markLocked(id string, e *entry) {
	e.dirty = true
	r.toFlush[id] = struct{}{}
}

func (r *Registry) signal() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Add registers a newly enrolled agent (already stored by the enrollment).
func (r *Registry) Add(a store.Agent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.agents[a.ID]; ok {
		return
	}
	// The registry owns its maps (see copyAgent).
	a.Labels, a.Facts = cloneMap(a.Labels), cloneMap(a.Facts)
	e := &entry{agent: a}
	r.agents[a.ID] = e
	// An agent that enrolls but never connects becomes down in time too.
	r.startTimerLocked(a.ID, e, r.ttlLocked()+r.cfg.Grace)
}

// Get returns a copy of the agent. Its Labels and Facts are shared with the
// registry: read them, never modify them.
func (r *Registry) Get(id string) (store.Agent, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.agents[id]
	if !ok {
		return store.Agent{}, false
	}
	return copyAgent(e.agent), true
}

// Lookup finds an agent by id or name.
func (r *Registry) Lookup(nameOrID string) (store.Agent, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.agents[nameOrID]; ok {
		return copyAgent(e.agent), true
	}
	for _, e := range r.agents {
		if e.agent.Name == nameOrID && !e.agent.Revoked {
			return copyAgent(e.agent), true
		}
	}
	return store.Agent{}, false
}

// Allowed reports whether an agent id may use the agent API: enrolled and
// not revoked.
func (r *Registry) Allowed(id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.agents[id]
	switch {
	case !ok:
		return fmt.Errorf("agent %s is not enrolled", id)
	case e.agent.Revoked:
		return ErrRevoked
	}
	return nil
}

// List returns every agent sorted by name (Labels and Facts shared, as for
// Get).
func (r *Registry) List() []store.Agent {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.sorted) != len(r.agents) {
		// Names never change in the registry: the order changes only when
		// an agent is added.
		r.sorted = r.sorted[:0]
		for _, e := range r.agents {
			r.sorted = append(r.sorted, e)
		}
		sort.Slice(r.sorted, func(i, j int) bool {
			a, b := &r.sorted[i].agent, &r.sorted[j].agent
			if a.Name != b.Name {
				return a.Name < b.Name
			}
			return a.ID < b.ID
		})
	}
	out := make([]store.Agent, len(r.sorted))
	for i, e := range r.sorted {
		out[i] = copyAgent(e.agent)
	}
	return out
}

// Counts returns how many agents are in each status (revoked not counted).
func (r *Registry) Counts() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := map[string]int{store.StatusConnected: 0, store.StatusDisconnected: 0, store.StatusDown: 0}
	for _, e := range r.agents {
		if !e.agent.Revoked {
			c[e.agent.Status]++
		}
	}
	return c
}

// Attach makes s the agent's live session, replacing (and closing) any
// older one, records the metadata from Hello and marks it connected.
func (r *Registry) Attach(id string, s *Session, hello *agentv1.Hello, now time.Time) (store.Agent, error) {
	r.mu.Lock()
	if r.closed {
		// Stop closed the sessions it knew of; one attached now would be
		// left open and hold up the server's shutdown.
		r.mu.Unlock()
		return store.Agent{}, ErrStopping
	}
	e, ok := r.agents[id]
	if !ok {
		r.mu.Unlock()
		return store.Agent{}, fmt.Errorf("agent %s is not enrolled", id)
	}
	if e.agent.Revoked {
		r.mu.Unlock()
		return store.Agent{}, ErrRevoked
	}
	old := e.session
	e.session = s
	e.agent.Status = store.StatusConnected
	e.agent.LastSeen = now
	if hello != nil {
		// Hello is authoritative: an agent restarted without a label
		// loses it (an empty map arrives as nil).
		e.agent.Labels = cloneMap(hello.GetLabels())
		e.agent.Facts = cloneMap(hello.GetFacts())
		e.agent.Version = hello.GetVersion()
		if d := hello.GetOutboxDroppedTotal(); d > e.agent.OutboxDropped {
			e.agent.OutboxDropped = d
		}
	}
	r.markLocked(id, e)
	r.startTimerLocked(id, e, r.ttlLocked()+r.cfg.Grace)
	a := copyAgent(e.agent)
	r.mu.Unlock()
	if old != nil {
		old.Close(errors.New("replaced by a newer stream from the same agent"))
	}
	r.signal()
	r.changed(a)
	return a, nil
}

// Detach ends s; if it was the agent's live session, the agent becomes
// disconnected (its timer keeps running and will mark it down).
func (r *Registry) Detach(id string, s *Session) {
	r.mu.Lock()
	e, ok := r.agents[id]
	if !ok || e.session != s {
		r.mu.Unlock()
		return
	}
	e.session = nil
	if e.agent.Status == store.StatusConnected {
		e.agent.Status = store.StatusDisconnected
		r.markLocked(id, e)
	}
	a := copyAgent(e.agent)
	r.mu.Unlock()
	r.signal()
	r.changed(a)
}

// Seen records a sign of life: it resets the agent's timer, in memory only
// (lastSeen is written with the agent's next status change).
func (r *Registry) Seen(id string, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.agents[id]
	if !ok || e.agent.Revoked {
		return
	}
	e.agent.LastSeen = now
	e.seenDirty = true
	r.startTimerLocked(id, e, r.ttlLocked()+r.cfg.Grace)
}

// SetCertExpiry records when the agent's newest certificate expires.
func (r *Registry) SetCertExpiry(id string, t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.agents[id]; ok {
		e.agent.CertExpiresAt = t
		r.markLocked(id, e)
	}
	r.signal()
}

// NoteDropped records the agent's outbox drop counter; a higher count is
// written on the next periodic flush (it rarely changes, and the result
// batches that carry it store it too).
func (r *Registry) NoteDropped(id string, dropped uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.agents[id]; ok && dropped > e.agent.OutboxDropped {
		e.agent.OutboxDropped = dropped
		r.markLocked(id, e)
	}
}

func (r *Registry) expire(id string) {
	r.mu.Lock()
	e, ok := r.agents[id]
	if !ok || r.closed || e.agent.Revoked || e.agent.Status == store.StatusDown {
		r.mu.Unlock()
		return
	}
	// The timer may have fired while Seen or Attach held the lock and reset
	// it: if the agent was seen within the window, this firing is stale.
	if left := time.Until(e.deadline); left > 0 {
		d := e.deadline
		r.startTimerLocked(id, e, left)
		e.deadline = d
		r.mu.Unlock()
		return
	}
	// Back-pressure is not silence: while the control plane holds the
	// agent's messages (handling them, or waiting to commit them), the ones
	// behind them cannot arrive. The agent gets a full TTL plus grace from
	// the last release.
	if e.session != nil {
		window := r.ttlLocked() + r.cfg.Grace
		held, released := e.session.heldUntil()
		if held {
			r.startTimerLocked(id, e, window)
			r.mu.Unlock()
			return
		}
		if left := time.Until(released.Add(window)); !released.IsZero() && left > 0 {
			r.startTimerLocked(id, e, left)
			r.mu.Unlock()
			return
		}
	}
	e.agent.Status = store.StatusDown
	r.markLocked(id, e)
	s := e.session
	e.session = nil
	a := copyAgent(e.agent)
	r.mu.Unlock()
	r.log.Warn("agent down: no heartbeat within TTL plus grace", "agent_id", id, "agent", a.Name, "last_seen", a.LastSeen)
	if s != nil {
		s.Close(errors.New("heartbeat TTL expired"))
	}
	r.signal()
	r.changed(a)
}

// Revoke marks the agent revoked for good, closes its stream, and persists
// it right away.
func (r *Registry) Revoke(nameOrID string, now time.Time) (store.Agent, error) {
	a, ok := r.Lookup(nameOrID)
	if !ok {
		return store.Agent{}, fmt.Errorf("agent %q: %w", nameOrID, store.ErrNotFound)
	}
	r.mu.Lock()
	e := r.agents[a.ID]
	e.agent.Revoked = true
	e.agent.RevokedAt = now
	e.agent.Status = store.StatusDown
	if e.timer != nil {
		e.timer.Stop()
	}
	s := e.session
	e.session = nil
	e.dirty, e.seenDirty = false, false
	delete(r.toFlush, a.ID)
	a = copyAgent(e.agent)
	r.mu.Unlock()
	if s != nil {
		s.Close(ErrRevoked)
	}
	if err := r.cfg.Store.PutAgents([]store.Agent{a}); err != nil {
		r.mu.Lock()
		r.markLocked(a.ID, e) // the flusher retries: a revocation must not be lost
		r.mu.Unlock()
		return a, fmt.Errorf("persist revocation: %w", err)
	}
	r.changed(a)
	return a, nil
}

// Session returns the agent's live session, if any.
func (r *Registry) Session(id string) *Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.agents[id]; ok {
		return e.session
	}
	return nil
}

// Connected calls fn for every agent with a live session.
func (r *Registry) Connected(fn func(a store.Agent, s *Session)) {
	type pair struct {
		a store.Agent
		s *Session
	}
	r.mu.Lock()
	var ps []pair
	for _, e := range r.agents {
		if e.session != nil {
			ps = append(ps, pair{copyAgent(e.agent), e.session})
		}
	}
	r.mu.Unlock()
	for _, p := range ps {
		fn(p.a, p.s)
	}
}

func (r *Registry) changed(a store.Agent) {
	if r.cfg.OnChange != nil {
		r.cfg.OnChange(a)
	}
}

func (r *Registry) flusher() {
	defer r.wg.Done()
	t := time.NewTicker(r.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			r.flush(true)
			return
		case <-r.kick:
			r.flush(false)
		case <-t.C:
			// Retries a failed flush, and catches what a kick missed.
			r.flush(false)
		}
	}
}

// flush persists the marked agents in one transaction, each with its
// current lastSeen. With all (at shutdown), it also writes the agents whose
// lastSeen alone changed.
func (r *Registry) flush(all bool) {
	r.mu.Lock()
	var batch []store.Agent
	take := func(e *entry) {
		batch = append(batch, copyAgent(e.agent))
		e.dirty, e.seenDirty = false, false
	}
	for id := range r.toFlush {
		if e, ok := r.agents[id]; ok && e.dirty {
			take(e)
		}
	}
	clear(r.toFlush)
	if all {
		for _, e := range r.agents {
			if e.seenDirty {
				take(e)
			}
		}
	}
	r.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	if err := r.cfg.Store.PutAgents(batch); err != nil {
		r.log.Error("persist agent liveness", "agents", len(batch), "err", err)
		r.mu.Lock()
		for _, a := range batch {
			if e, ok := r.agents[a.ID]; ok {
				r.markLocked(a.ID, e)
			}
		}
		r.mu.Unlock()
	}
}

// Stop stops every timer, closes the sessions and flushes state.
func (r *Registry) Stop() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	var sessions []*Session
	for _, e := range r.agents {
		if e.timer != nil {
			e.timer.Stop()
		}
		if e.session != nil {
			sessions = append(sessions, e.session)
		}
	}
	r.mu.Unlock()
	for _, s := range sessions {
		s.Close(errors.New("control plane shutting down"))
	}
	close(r.stop)
	r.wg.Wait()
}

// copyAgent copies an agent out of the registry. The Labels and Facts maps
// are shared, not cloned: the registry never modifies a map it holds (it
// replaces it, see Attach), and nobody else may modify one. Cloning them
// made List cost ~20 ms and 40,000 allocations for 10,000 agents, once per
// remediation attempt (docs/BENCHMARKS.md, T7).
func copyAgent(a store.Agent) store.Agent {
	return a
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Session is one live agent stream. Messages to the agent go through Send,
// which a single writer drains (gRPC allows one sender): whoever calls
// SetNotify is told when a message was queued, and drains Out.
type Session struct {
	AgentID string
	out     chan *agentv1.ConnectResponse
	ctx     context.Context
	cancel  context.CancelCauseFunc
	notify  func()
	// held counts the agent's messages the control plane has taken in and
	// not finished with (being handled, or queued for commit); releasedAt
	// (unix ns) is when it last dropped to zero. While the control plane
	// itself holds an agent's messages back, the agent's later messages
	// (heartbeats among them) wait behind them: that is not silence.
	held       atomic.Int32
	releasedAt atomic.Int64
}

// NewSession creates a session bound to the stream's context.
func NewSession(ctx context.Context, agentID string, buffer int) *Session {
	ctx, cancel := context.WithCancelCause(ctx)
	return &Session{AgentID: agentID, out: make(chan *agentv1.ConnectResponse, buffer), ctx: ctx, cancel: cancel}
}

// SetNotify sets the function called after each message queued by Send or
// TrySend (the stream starts its writer with it). Call it before the
// session is shared (before Attach).
func (s *Session) SetNotify(f func()) { s.notify = f }

// Context is cancelled when the session ends.
func (s *Session) Context() context.Context { return s.ctx }

// Out is the channel the writer drains.
func (s *Session) Out() <-chan *agentv1.ConnectResponse { return s.out }

// Queued is how many messages wait in the queue.
func (s *Session) Queued() int { return len(s.out) }

// Hold notes that the control plane took in one of the agent's messages
// and is not done with it; Release undoes one Hold. While any is held (and
// for a TTL plus grace after the last Release) the registry does not mark
// the agent down: its later messages are waiting behind the held ones.
func (s *Session) Hold() { s.held.Add(1) }

// Release undoes one Hold.
func (s *Session) Release() {
	if s.held.Add(-1) == 0 {
		s.releasedAt.Store(time.Now().UnixNano())
	}
}

// heldUntil reports whether messages are held now, or else when the last
// release was (zero if never).
func (s *Session) heldUntil() (bool, time.Time) {
	if s.held.Load() > 0 {
		return true, time.Time{}
	}
	if ns := s.releasedAt.Load(); ns != 0 {
		return false, time.Unix(0, ns)
	}
	return false, time.Time{}
}

// Send queues a message for the agent; it blocks while the queue is full and
// returns false once the session has ended.
func (s *Session) Send(m *agentv1.ConnectResponse) bool {
	select {
	case s.out <- m:
		s.kick()
		return true
	case <-s.ctx.Done():
		return false
	}
}

// TrySend queues a message without blocking. If the queue is full the
// agent is not reading its stream: the session is closed (the agent
// reconnects and resends what was not acknowledged) and false is returned.
// Callers on shared goroutines (the ingest committer, policy pushes) use it
// so that one slow agent can never stall the others.
func (s *Session) TrySend(m *agentv1.ConnectResponse) bool {
	select {
	case s.out <- m:
		s.kick()
		return true
	case <-s.ctx.Done():
		return false
	default:
		s.Close(errors.New("agent is not reading its stream (send queue full)"))
		return false
	}
}

func (s *Session) kick() {
	if s.notify != nil {
		s.notify()
	}
}

// Close ends the session with a reason.
func (s *Session) Close(reason error) { s.cancel(reason) }
