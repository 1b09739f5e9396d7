// Package stream is the agent's side of the AgentService.Connect stream: it
// connects, says Hello, waits for Welcome, sends the outbox's results in
// acknowledged batches, sends heartbeats, hands check assignments and tasks
// to the agent, and reconnects with gRPC's backoff when anything fails.
//
// Delivery is at least once: a result leaves the outbox only when the control
// plane has acknowledged it (BatchAck or Welcome.results_acked_through), and
// every session starts sending again from the first unacknowledged result.
// The control plane stores each (agent, seq) once.
//
// Task updates (the state.DB task-update outbox) go the same way: every
// session sends all pending ones first, NotifyTasks sends new ones at once,
// and an update leaves the outbox on its TaskUpdateAck. The control plane
// must treat a repeated update as a duplicate.
package stream

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"tend.dev/tend/agent/state"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Defaults for Config.
const (
	DefaultBatchMax           = 500
	DefaultBatchMaxBytes      = 1 << 20
	DefaultMaxInFlight        = 4
	DefaultWelcomeTimeout     = 30 * time.Second
	DefaultAckTimeout         = 2 * time.Minute
	DefaultPollInterval       = time.Second
	DefaultHeartbeatInterval  = 10 * time.Second // when Welcome does not say
	DefaultTaskResendInterval = 30 * time.Second
	DefaultLinger             = 100 * time.Millisecond
)

// Message size limits of the agent's connection (DialOptions). The
// control plane refuses messages over 4 MiB (controlplane/server
// DefaultMaxRecvMsgSize) and sends at most 16 MiB (DefaultMaxSendMsgSize).
const (
	// MaxSendMsgSize caps one message the agent sends: a result batch
	// holds at most BatchMaxBytes (default 1 MiB) of results plus one, and
	// a result's output is capped at 4 KiB; the control plane would refuse
	// more anyway.
	MaxSendMsgSize = 4 << 20
	// MaxRecvMsgSize caps one message the agent accepts: the largest are
	// its check assignment (one spec per policy that selects it) and task
	// envelopes (params from a policy file of at most 1 MiB).
	MaxRecvMsgSize = 16 << 20
)

// DialOptions are the gRPC options of every connection to the control
// plane, beyond credentials: the message size limits.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithDefaultCallOptions(
		grpc.MaxCallRecvMsgSize(MaxRecvMsgSize),
		grpc.MaxCallSendMsgSize(MaxSendMsgSize),
	)}
}

// minHeartbeatInterval guards against a Welcome with a tiny interval.
const minHeartbeatInterval = 10 * time.Millisecond

// closeGrace is how long a session waits, after CloseSend on shutdown, for
// the control plane to end the stream before cancelling it.
const closeGrace = 2 * time.Second

// Config wires a Client. Dial, DB and Hello are required.
type Config struct {
	// Dial opens a connection to the control plane (mTLS is the caller's
	// business). It is called once per session; the connection is closed
	// when the session ends.
	Dial func(ctx context.Context) (*grpc.ClientConn, error)
	// DB is the outbox the results are sent from.
	DB *state.DB
	// Hello builds the Hello message, fresh on every connect. The client
	// fills in outbox_pending, outbox_dropped_total and
	// task_seq_high_water itself.
	Hello func() *agentv1.Hello
	// OnAssignment receives every CheckAssignment; applying and persisting
	// it (state.DB.SaveAssignment) is the caller's job. The callbacks run
	// on the stream's receiving goroutine and must return promptly.
	OnAssignment func(*agentv1.CheckAssignment)
	// OnWelcome, if set, is called once per session after Welcome.
	OnWelcome func(*agentv1.Welcome)
	// OnTask, if set, receives every TaskDelivery. It must not block
	// (tasks.Runner.Deliver queues or rejects at once).
	OnTask func(*agentv1.TaskDelivery)
	// OnSigningKeys, if set, applies a SigningKeySet (durably) and reports
	// whether it changed the keys; KeyIDs lists the keys held now, for
	// Hello and for the heartbeat after a change.
	OnSigningKeys func(*agentv1.SigningKeySet) (bool, error)
	KeyIDs        func() []string
	// OnStandingOrders, if set, receives every StandingOrders message.
	OnStandingOrders func(*agentv1.StandingOrders)
	// OnRefused, if set, is told when the control plane refuses this
	// agent (PermissionDenied: it was revoked).
	OnRefused func(error)
	// AutonomousRuns, if set, lists the run reports to send (after task
	// updates, before results); OnAutonomousAck is told each one the
	// control plane acknowledged.
	AutonomousRuns  func() ([]*agentv1.AutonomousRun, error)
	OnAutonomousAck func(runID string)
	// Backoff is the reconnect schedule (gRPC's: 1s ×1.6 ±20%, max 120s).
	Backoff BackoffConfig
	// BatchMax is the most results in one ResultBatch (default 500).
	BatchMax int
	// BatchMaxBytes caps one ResultBatch's encoded results (default 1 MiB;
	// a batch always carries at least one result).
	BatchMaxBytes int
	// MaxInFlight is the most batches sent and not yet acknowledged
	// (default 4).
	MaxInFlight int
	// WelcomeTimeout bounds the wait for Welcome after Hello (default 30s).
	WelcomeTimeout time.Duration
	// AckTimeout: when the oldest unacknowledged batch is older than this,
	// the session is ended and everything unacknowledged is resent on the
	// next one (default 2m).
	AckTimeout time.Duration
	// TaskResendInterval: a task update sent and not acknowledged for this
	// long is sent again, with every later one, on the same session
	// (default 30s).
	TaskResendInterval time.Duration
	// Linger is how long a result may wait for others to share its batch
	// (default 100ms; negative: send at once). The sender waits while
	// fewer than a full batch are unsent and the oldest of them has
	// waited less than Linger; a full batch, a batch with any result that
	// is not OK (it may complete a trigger), results already in the
	// outbox when the session began, and task updates never wait. One
	// message per result costs the control plane several times the CPU
	// of a shared one (docs/BENCHMARKS.md, T4).
	Linger time.Duration
	// PollInterval is how often the sender looks at the outbox when Notify
	// is not called (default 1s).
	PollInterval time.Duration
	// Log is the logger (default: discard).
	Log *slog.Logger
}

func (c Config) withDefaults() Config {
	c.Backoff = c.Backoff.withDefaults()
	if c.BatchMax <= 0 {
		c.BatchMax = DefaultBatchMax
	}
	if c.BatchMaxBytes <= 0 {
		c.BatchMaxBytes = DefaultBatchMaxBytes
	}
	// A batch must fit in one message, with room for its envelope.
	c.BatchMaxBytes = min(c.BatchMaxBytes, MaxSendMsgSize-64<<10)
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.WelcomeTimeout <= 0 {
		c.WelcomeTimeout = DefaultWelcomeTimeout
	}
	if c.AckTimeout <= 0 {
		c.AckTimeout = DefaultAckTimeout
	}
	if c.TaskResendInterval <= 0 {
		c.TaskResendInterval = DefaultTaskResendInterval
	}
	if c.Linger == 0 {
		c.Linger = DefaultLinger
	}
	if c.PollInterval <= 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c
}

// Stats are the client's counters since New.
type Stats struct {
	ConnectAttempts     uint64 // sessions started (dials)
	Connects            uint64 // sessions that got a Welcome
	Reconnects          uint64 // Connects after the first
	BatchesSent         uint64
	ResultsSent         uint64 // including resent results
	BatchesAcked        uint64
	ResultsAcked        uint64 // results of acknowledged batches
	HeartbeatsSent      uint64
	AssignmentsReceived uint64
	TasksReceived       uint64
	TaskUpdatesSent     uint64 // including resent updates
	TaskUpdatesAcked    uint64
}

// Client owns the agent's connection to the control plane.
type Client struct {
	cfg    Config
	log    *slog.Logger
	notify chan struct{}

	connected atomic.Bool
	batchID   atomic.Uint64
	// keysChanged: the next heartbeat reports the signing keys held.
	keysChanged atomic.Bool
	// offlineSince is when the last session ended, or when the client was
	// created (a time.Time with its monotonic reading: a wall-clock step
	// does not change how long the agent has been offline).
	offlineMu    sync.Mutex
	offlineSince time.Time
	// runsGen counts NotifyRuns calls: run reports are read again only
	// when it changed.
	runsGen atomic.Uint64

	connectAttempts, connects, batchesSent, resultsSent     atomic.Uint64
	batchesAcked, resultsAcked, heartbeatsSent, assignments atomic.Uint64
	tasks, taskUpdatesSent, taskUpdatesAcked                atomic.Uint64

	// Hooks for tests.
	rand func() float64
	wait func(ctx context.Context, d time.Duration) bool
}

// New returns a client; Run starts it.
func New(cfg Config) *Client {
	cfg = cfg.withDefaults()
	c := &Client{
		cfg:    cfg,
		log:    cfg.Log.With("component", "agent_stream"),
		notify: make(chan struct{}, 1),
		rand:   rand.Float64,
		wait:   sleep,
	}
	c.offlineSince = time.Now()
	return c
}

// Notify wakes the sender: new results were appended to the outbox. It never
// blocks.
func (c *Client) Notify() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// NotifyRuns wakes the sender: an autonomous run report was stored.
func (c *Client) NotifyRuns() {
	c.runsGen.Add(1)
	c.Notify()
}

// NotifyTasks wakes the sender: a task update was written to the outbox
// (state.DB.PutTaskUpdate). It never blocks.
func (c *Client) NotifyTasks() { c.Notify() }

// Connected reports whether a session is up (Welcome received, not ended).
func (c *Client) Connected() bool { return c.connected.Load() }

// OfflineFor is how long the control plane has been unreachable: 0 while a
// session is up, else the time since the last one ended (or since the
// client was created, if it never connected).
func (c *Client) OfflineFor() time.Duration {
	if c.connected.Load() {
		return 0
	}
	c.offlineMu.Lock()
	defer c.offlineMu.Unlock()
	return time.Since(c.offlineSince)
}

func (c *Client) setOfflineSince(t time.Time) {
	c.offlineMu.Lock()
	c.offlineSince = t
	c.offlineMu.Unlock()
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	connects := c.connects.Load()
	return Stats{
		ConnectAttempts:     c.connectAttempts.Load(),
		Connects:            connects,
		Reconnects:          max(connects, 1) - 1,
		BatchesSent:         c.batchesSent.Load(),
		ResultsSent:         c.resultsSent.Load(),
		BatchesAcked:        c.batchesAcked.Load(),
		ResultsAcked:        c.resultsAcked.Load(),
		HeartbeatsSent:      c.heartbeatsSent.Load(),
		AssignmentsReceived: c.assignments.Load(),
		TasksReceived:       c.tasks.Load(),
		TaskUpdatesSent:     c.taskUpdatesSent.Load(),
		TaskUpdatesAcked:    c.taskUpdatesAcked.Load(),
	}
}

// Run connects and keeps the session up, reconnecting with backoff after any
// failure, until ctx is done; then it closes the stream (CloseSend) and
// returns nil. It returns an error only when the Config is incomplete. Run
// must not be called twice at once.
func (c *Client) Run(ctx context.Context) error {
	switch {
	case c.cfg.Dial == nil:
		return errors.New("agent stream: Config.Dial is required")
	case c.cfg.DB == nil:
		return errors.New("agent stream: Config.DB is required")
	case c.cfg.Hello == nil:
		return errors.New("agent stream: Config.Hello is required")
	}
	attempt := 0
	for {
		up, err := c.session(ctx)
		if ctx.Err() != nil {
			c.log.Info("agent stream stopped")
			return nil
		}
		if status.Code(err) == codes.PermissionDenied && c.cfg.OnRefused != nil {
			c.cfg.OnRefused(err)
		}
		if up >= c.cfg.Backoff.ResetAfter {
			attempt = 0
		}
		delay := c.cfg.Backoff.Delay(attempt, c.rand())
		attempt++
		c.log.Warn("control plane stream ended, reconnecting",
			"error", err, "up_for", up.Round(time.Millisecond), "attempt", attempt, "retry_in", delay.Round(time.Millisecond))
		if !c.wait(ctx, delay) {
			c.log.Info("agent stream stopped")
			return nil
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
