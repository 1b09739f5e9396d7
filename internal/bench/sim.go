package bench

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/agent/stream"
	"tend.dev/tend/internal/task"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Counters are the simulated fleet's totals since the start of the run.
type Counters struct {
	Generated  atomic.Uint64 // results produced by the simulated checks
	Sent       atomic.Uint64 // results sent, resends included
	Acked      atomic.Uint64 // results in acknowledged (durable) batches
	Stored     atomic.Uint64 // results the control plane stored as new
	Duplicates atomic.Uint64 // results acknowledged as already stored

	BatchesSent  atomic.Uint64
	BatchesAcked atomic.Uint64
	Heartbeats   atomic.Uint64

	Triggers         atomic.Uint64 // failing results that complete a trigger
	Tasks            atomic.Uint64 // tasks received and verified
	TaskDuplicates   atomic.Uint64 // tasks at or below the high-water mark
	TaskRejects      atomic.Uint64 // bad signature or addressee
	TaskUpdatesSent  atomic.Uint64
	TaskUpdatesAcked atomic.Uint64
	Unremediated     atomic.Uint64 // failure episodes given up without a task

	AckedOnWelcome atomic.Uint64 // results found durable by a Welcome (their ack was lost)

	FullHandshakes atomic.Uint64 // TLS handshakes that did not resume a session
	Resumed        atomic.Uint64 // TLS handshakes that resumed one

	Connects    atomic.Uint64 // sessions that got a Welcome
	Drops       atomic.Uint64 // sessions that ended unexpectedly
	ConnectErrs atomic.Uint64 // sessions that ended before Welcome
}

// counterSnapshot is a plain copy of Counters.
type counterSnapshot struct {
	Generated, Sent, Acked, Stored, Duplicates      uint64
	BatchesSent, BatchesAcked, Heartbeats           uint64
	Triggers, Tasks, TaskDuplicates, TaskRejects    uint64
	TaskUpdatesSent, TaskUpdatesAcked, Unremediated uint64
	Connects, Drops, ConnectErrs                    uint64
	AckedOnWelcome                                  uint64
}

func (c *Counters) snapshot() counterSnapshot {
	return counterSnapshot{
		Generated: c.Generated.Load(), Sent: c.Sent.Load(), Acked: c.Acked.Load(), Stored: c.Stored.Load(), Duplicates: c.Duplicates.Load(),
		BatchesSent: c.BatchesSent.Load(), BatchesAcked: c.BatchesAcked.Load(), Heartbeats: c.Heartbeats.Load(),
		Triggers: c.Triggers.Load(), Tasks: c.Tasks.Load(), TaskDuplicates: c.TaskDuplicates.Load(), TaskRejects: c.TaskRejects.Load(),
		TaskUpdatesSent: c.TaskUpdatesSent.Load(), TaskUpdatesAcked: c.TaskUpdatesAcked.Load(), Unremediated: c.Unremediated.Load(),
		Connects: c.Connects.Load(), Drops: c.Drops.Load(), ConnectErrs: c.ConnectErrs.Load(),
		AckedOnWelcome: c.AckedOnWelcome.Load(),
	}
}

// simFleet is what all simulated agents share.
type simFleet struct {
	server  string
	fleet   *Fleet
	keys    map[string]ed25519.PublicKey
	srcIPs  []net.IP
	labels  map[string]string
	facts   map[string]string
	backoff stream.BackoffConfig

	failureRate     float64
	triggerFailures int
	maxInFlight     int
	batchMax        int
	outboxMax       int
	// aligned: an agent's checks run together (one batch per interval).
	aligned bool
	// giveUp: a failing check with no task for this long recovers by
	// itself (counted as unremediated).
	giveUp time.Duration

	c Counters
	// generating: the checks produce results (off while draining).
	generating atomic.Bool
	// expectDown: sessions ending now are expected (restart), not drops.
	expectDown atomic.Bool
	connected  atomic.Int64

	ackHist  atomic.Pointer[Histogram] // result sent → durable ack
	timeline atomic.Pointer[timeline]  // per second of the window
	trigHist atomic.Pointer[Histogram] // trigger-completing result sent → task acknowledged

	mu     sync.Mutex
	agents []*simAgent
	wg     sync.WaitGroup

	errMu sync.Mutex
	errs  map[string]int // why sessions failed before Welcome
}

// noteErr counts why a session failed before Welcome.
func (s *simFleet) noteErr(step string, err error) {
	msg := step
	if err != nil {
		msg += ": " + status.Convert(err).Message()
		if len(msg) > 120 {
			msg = msg[:120]
		}
	}
	s.errMu.Lock()
	if s.errs == nil {
		s.errs = map[string]int{}
	}
	if len(s.errs) < 20 || s.errs[msg] > 0 {
		s.errs[msg]++
	}
	s.errMu.Unlock()
}

// connectErrors returns the reasons sessions failed, most frequent first.
func (s *simFleet) connectErrors() []string {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	type kv struct {
		k string
		n int
	}
	var l []kv
	for k, n := range s.errs {
		l = append(l, kv{k, n})
	}
	sort.Slice(l, func(i, j int) bool { return l[i].n > l[j].n })
	out := make([]string, 0, len(l))
	for _, e := range l {
		out = append(out, fmt.Sprintf("%d x %s", e.n, e.k))
	}
	return out
}

func newSimFleet(server string, f *Fleet, o simOptions) *simFleet {
	s := &simFleet{
		server:          server,
		fleet:           f,
		keys:            task.KeyMap(f.SigningKeys),
		srcIPs:          o.srcIPs,
		labels:          o.labels,
		facts:           map[string]string{"os": "linux", "arch": "amd64", "kernel": "6.1.0-bench"},
		backoff:         stream.DefaultBackoff(),
		failureRate:     o.failureRate,
		triggerFailures: max(o.triggerFailures, 1),
		maxInFlight:     max(o.maxInFlight, 1),
		batchMax:        max(o.batchMax, 1),
		outboxMax:       100000,
		giveUp:          o.giveUp,
		aligned:         o.aligned,
	}
	s.ackHist.Store(&Histogram{})
	s.trigHist.Store(&Histogram{})
	s.generating.Store(true)
	return s
}

type simOptions struct {
	srcIPs          []net.IP
	labels          map[string]string
	failureRate     float64
	triggerFailures int
	maxInFlight     int
	batchMax        int
	giveUp          time.Duration
	aligned         bool
}

// resetHistograms starts new latency histograms (the measurement window).
func (s *simFleet) resetHistograms() {
	s.ackHist.Store(&Histogram{})
	s.trigHist.Store(&Histogram{})
}

// start launches agent i of the fleet; it runs until ctx ends.
func (s *simFleet) start(ctx context.Context, i int) {
	a := &simAgent{
		s:      s,
		id:     s.fleet.Agents[i],
		src:    s.srcIPs[i%len(s.srcIPs)],
		rnd:    rand.New(rand.NewPCG(uint64(i)+1, uint64(time.Now().UnixNano()))),
		byName: map[string]*simCheck{},
		wake:   make(chan struct{}, 1),
	}
	s.mu.Lock()
	s.agents = append(s.agents, a)
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		a.run(ctx)
	}()
}

// each calls fn for every started agent.
func (s *simFleet) each(fn func(a *simAgent)) {
	s.mu.Lock()
	as := append([]*simAgent(nil), s.agents...)
	s.mu.Unlock()
	for _, a := range as {
		fn(a)
	}
}

// pending is the number of results and task updates not yet acknowledged.
func (s *simFleet) pending() (results, updates int) {
	s.each(func(a *simAgent) {
		a.mu.Lock()
		results += len(a.outbox)
		updates += len(a.updates)
		a.mu.Unlock()
	})
	return results, updates
}

// reconnectedSince returns, for the agents connected on a session that
// began after t, when they got Welcome and when they dialed.
func (s *simFleet) reconnectedSince(t time.Time) (welcomes, dials []time.Time) {
	s.each(func(a *simAgent) {
		a.mu.Lock()
		if a.connected && a.lastWelcome.After(t) {
			welcomes = append(welcomes, a.lastWelcome)
			dials = append(dials, a.lastDial)
		}
		a.mu.Unlock()
	})
	return welcomes, dials
}

// reconnection is one agent's way back after its session ended at or after
// t: when that session ended and when each attempt since then began.
type reconnection struct {
	ended    time.Time
	attempts []sessionAttempt
}

// sessionAttempt is one session attempt: when it began, and the backoff attempt
// number of the delay that preceded it (-1: none, the agent's first).
type sessionAttempt struct {
	at      time.Time
	backoff int
}

// reconnectionsSince returns the reconnection of every agent whose session
// ended at or after t.
func (s *simFleet) reconnectionsSince(t time.Time) []reconnection {
	var rs []reconnection
	s.each(func(a *simAgent) {
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, e := range a.ends {
			if e.Before(t) {
				continue
			}
			r := reconnection{ended: e}
			for _, at := range a.attempts {
				if at.at.After(e) {
					r.attempts = append(r.attempts, at)
				}
			}
			rs = append(rs, r)
			return
		}
	})
	return rs
}

// simAgent is one simulated agent: its own TCP connection, TLS session and
// stream, speaking the agent protocol as tend-agent does.
type simAgent struct {
	s    *simFleet
	id   *Identity
	src  net.IP
	wake chan struct{}

	mu          sync.Mutex
	rnd         *rand.Rand
	seq         uint64
	outbox      []outResult // unacknowledged results, in seq order
	sentTo      uint64      // highest seq sent on this session
	inflight    []sentBatch
	batchID     uint64
	checks      []*simCheck
	byName      map[string]*simCheck
	taskHW      uint64
	updates     []*pendingUpdate
	anchor      time.Time // aligned checks: when the agent's checks run
	connected   bool
	lastWelcome time.Time
	lastDial    time.Time // when the session that got lastWelcome was dialed
	// attempts: when each session attempt began (dialed); ends: when each
	// session that got Welcome ended. For the restart scenario's backoff
	// envelope check (reconnects are rare: these stay short).
	attempts []sessionAttempt
	ends     []time.Time
}

type outResult struct {
	r     *agentv1.CheckResult
	check *simCheck
	trig  bool // completes the trigger
}

type sentBatch struct {
	id   uint64
	last uint64
	n    int
	at   time.Time
}

type simCheck struct {
	id        string
	version   uint64
	interval  time.Duration
	next      time.Time
	failing   bool
	failCount int
	failSince time.Time
	trigSent  time.Time // when the result that completed the trigger was sent
}

type pendingUpdate struct {
	u        *agentv1.TaskUpdate
	trigSent time.Time // RUNNING: when the triggering result was sent
	sent     bool      // on this session
}

func (a *simAgent) poke() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// run keeps a session up, reconnecting with the agent's backoff (gRPC's:
// 1 s ×1.6 ±20%, max 120 s, reset after 10 s up).
func (a *simAgent) run(ctx context.Context) {
	attempt, after := 0, -1
	for ctx.Err() == nil {
		a.mu.Lock()
		a.attempts = append(a.attempts, sessionAttempt{at: time.Now(), backoff: after})
		a.mu.Unlock()
		up := a.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if up > 0 {
			a.mu.Lock()
			a.ends = append(a.ends, time.Now())
			a.mu.Unlock()
			if !a.s.expectDown.Load() {
				a.s.c.Drops.Add(1)
			}
		} else {
			a.s.c.ConnectErrs.Add(1)
		}
		if up >= a.s.backoff.ResetAfter {
			attempt = 0
		}
		a.mu.Lock()
		r := a.rnd.Float64()
		a.mu.Unlock()
		d := a.s.backoff.Delay(attempt, r)
		after = attempt
		attempt++
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (a *simAgent) dial() (*grpc.ClientConn, error) {
	s := a.s
	d := &net.Dialer{
		LocalAddr: &net.TCPAddr{IP: a.src},
		// Let connect() pick the port, so that a source address is shared
		// by as many connections as there are (port, destination) pairs.
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			})
			return errors.Join(err, serr)
		},
	}
	tlsConf := s.fleet.TLSConfig(a.id, s.server)
	tlsConf.VerifyConnection = func(cs tls.ConnectionState) error {
		if cs.DidResume {
			s.c.Resumed.Add(1)
		} else {
			s.c.FullHandshakes.Add(1)
		}
		return nil
	}
	return grpc.NewClient("passthrough:///"+s.server,
		append(stream.DialOptions(),
			grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return d.DialContext(ctx, "tcp", addr)
			}),
			// As tend-agent.
			grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
			// The bench holds tens of thousands of connections: keep its
			// own buffers small (this does not change the server's).
			grpc.WithReadBufferSize(4<<10),
			grpc.WithWriteBufferSize(4<<10),
			grpc.WithSharedWriteBuffer(true),
		)...)
}

// session runs one connection; it returns how long it was up after
// Welcome (0 if it never got one).
func (a *simAgent) session(ctx context.Context) time.Duration {
	dialed := time.Now()
	conn, err := a.dial()
	if err != nil {
		a.s.noteErr("dial", err)
		return 0
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := agentv1.NewAgentServiceClient(conn).Connect(sctx)
	if err != nil {
		a.s.noteErr("connect", err)
		return 0
	}
	a.mu.Lock()
	hello := &agentv1.Hello{
		Version:          "tend-bench",
		Labels:           a.s.labels,
		Facts:            a.s.facts,
		OutboxPending:    uint64(len(a.outbox)),
		TaskSeqHighWater: a.taskHW,
	}
	a.mu.Unlock()
	if err := st.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: hello}}); err != nil {
		a.s.noteErr("hello", err)
		return 0
	}
	timer := time.AfterFunc(30*time.Second, cancel)
	m, err := st.Recv()
	timer.Stop()
	if err != nil || m.GetWelcome() == nil {
		a.s.noteErr("welcome", err)
		return 0
	}
	w := m.GetWelcome()
	now := time.Now()
	a.mu.Lock()
	through := w.GetResultsAckedThrough()
	// Results the control plane made durable without the agent hearing
	// of it (the control plane stopped between commit and ack).
	before := len(a.outbox)
	a.trimOutbox(through)
	a.s.c.AckedOnWelcome.Add(uint64(before - len(a.outbox)))
	a.seq = max(a.seq, through)
	a.sentTo = through
	a.inflight = a.inflight[:0]
	for _, u := range a.updates {
		u.sent = false
	}
	a.connected = true
	a.lastWelcome, a.lastDial = now, dialed
	a.mu.Unlock()
	a.s.connected.Add(1)
	a.s.c.Connects.Add(1)
	defer func() {
		a.mu.Lock()
		a.connected = false
		a.mu.Unlock()
		a.s.connected.Add(-1)
	}()

	hb := w.GetHeartbeatInterval().AsDuration()
	if hb <= 0 {
		hb = stream.DefaultHeartbeatInterval
	}
	recvErr := make(chan error, 1)
	go func() { recvErr <- a.receive(st) }()
	receiverDone := a.sendLoop(sctx, st, recvErr, hb)
	cancel()
	if !receiverDone {
		<-recvErr
	}
	return time.Since(now)
}

func (a *simAgent) jitter(d time.Duration) time.Duration {
	a.mu.Lock()
	r := a.rnd.Float64()
	a.mu.Unlock()
	return time.Duration(float64(d) * (1 + 0.1*(2*r-1)))
}

type connectStream = grpc.BidiStreamingClient[agentv1.ConnectRequest, agentv1.ConnectResponse]

// sendLoop is the session's only sender: results as their checks come due,
// task updates, heartbeats (only after an interval with nothing else
// sent, as tend-agent). It returns when the session ends, true if the
// receiver's error was consumed.
func (a *simAgent) sendLoop(ctx context.Context, st connectStream, recvErr chan error, hb time.Duration) bool {
	hbTimer := time.NewTimer(a.jitter(hb))
	defer hbTimer.Stop()
	due := time.NewTimer(time.Hour)
	defer due.Stop()
	for {
		now := time.Now()
		a.mu.Lock()
		if a.s.generating.Load() {
			a.generate(now)
		}
		batches := a.takeBatches(now)
		ups := a.takeUpdates()
		next := a.nextDue()
		a.mu.Unlock()
		for _, u := range ups {
			if !u.trigSent.IsZero() {
				a.s.trigHist.Load().Record(time.Since(u.trigSent))
			}
			if err := st.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_TaskUpdate{TaskUpdate: u.u}}); err != nil {
				return false
			}
			a.s.c.TaskUpdatesSent.Add(1)
		}
		for _, b := range batches {
			if err := st.Send(b); err != nil {
				return false
			}
			a.s.c.BatchesSent.Add(1)
			a.s.c.Sent.Add(uint64(len(b.GetResults().GetResults())))
		}
		// As tend-agent: a heartbeat only after an interval with nothing
		// else sent (the control plane takes any message as liveness).
		if len(ups)+len(batches) > 0 {
			hbTimer.Reset(a.jitter(hb))
		}
		if !next.IsZero() {
			due.Reset(max(time.Until(next), time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return false
		case <-recvErr:
			return true
		case <-a.wake:
		case <-due.C:
		case <-hbTimer.C:
			if err := st.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{SentAt: timestamppb.Now()}}}); err != nil {
				return false
			}
			a.s.c.Heartbeats.Add(1)
			hbTimer.Reset(a.jitter(hb))
		}
	}
}

// generate runs the checks that are due (catching up on runs missed while
// disconnected, as the real agent's scheduler keeps running). Locked.
func (a *simAgent) generate(now time.Time) {
	s := a.s
	for _, c := range a.checks {
		for !c.next.After(now) {
			at := c.next
			c.next = c.next.Add(c.interval)
			if len(a.outbox) >= s.outboxMax {
				continue
			}
			status, out := agentv1.CheckStatus_CHECK_STATUS_OK, "OK - tend-bench simulated check"
			if !c.failing && s.failureRate > 0 && a.rnd.Float64() < s.failureRate {
				c.failing, c.failCount, c.failSince = true, 0, at
			}
			if c.failing && s.giveUp > 0 && at.Sub(c.failSince) > s.giveUp {
				c.failing, c.trigSent = false, time.Time{}
				s.c.Unremediated.Add(1)
			}
			trig := false
			if c.failing {
				status, out = agentv1.CheckStatus_CHECK_STATUS_CRITICAL, "CRITICAL - tend-bench simulated failure"
				c.failCount++
				if c.failCount == s.triggerFailures {
					trig = true
					s.c.Triggers.Add(1)
				}
			}
			a.seq++
			a.outbox = append(a.outbox, outResult{check: c, trig: trig, r: &agentv1.CheckResult{
				Seq:           a.seq,
				CheckId:       c.id,
				PolicyVersion: c.version,
				Status:        status,
				Output:        out,
				Metrics:       map[string]float64{"value": float64(a.seq % 100)},
				StartedAt:     timestamppb.New(at),
				Duration:      durationpb.New(2 * time.Millisecond),
			}})
			s.c.Generated.Add(1)
		}
	}
}

func (a *simAgent) nextDue() time.Time {
	var next time.Time
	for _, c := range a.checks {
		if next.IsZero() || c.next.Before(next) {
			next = c.next
		}
	}
	return next
}

// takeBatches builds the batches the window allows. Locked.
func (a *simAgent) takeBatches(now time.Time) []*agentv1.ConnectRequest {
	var out []*agentv1.ConnectRequest
	for len(a.inflight) < a.s.maxInFlight {
		i := sort.Search(len(a.outbox), func(i int) bool { return a.outbox[i].r.GetSeq() > a.sentTo })
		if i == len(a.outbox) {
			break
		}
		j := min(i+a.s.batchMax, len(a.outbox))
		rs := make([]*agentv1.CheckResult, 0, j-i)
		for _, o := range a.outbox[i:j] {
			rs = append(rs, o.r)
			if o.trig && o.check.trigSent.IsZero() && o.check.failing {
				o.check.trigSent = now
			}
		}
		a.batchID++
		last := rs[len(rs)-1].GetSeq()
		a.inflight = append(a.inflight, sentBatch{id: a.batchID, last: last, n: len(rs), at: now})
		a.sentTo = last
		out = append(out, &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Results{Results: &agentv1.ResultBatch{BatchId: a.batchID, Results: rs}}})
	}
	return out
}

// takeUpdates returns the task updates not yet sent on this session. Locked.
func (a *simAgent) takeUpdates() []*pendingUpdate {
	var out []*pendingUpdate
	for _, u := range a.updates {
		if !u.sent {
			u.sent = true
			out = append(out, u)
		}
	}
	return out
}

// trimOutbox forgets the results at or below seq. Locked.
func (a *simAgent) trimOutbox(seq uint64) {
	k := sort.Search(len(a.outbox), func(i int) bool { return a.outbox[i].r.GetSeq() > seq })
	if k == 0 {
		return
	}
	n := copy(a.outbox, a.outbox[k:])
	clear(a.outbox[n:])
	a.outbox = a.outbox[:n]
}

func (a *simAgent) receive(st connectStream) error {
	for {
		m, err := st.Recv()
		if err != nil {
			return err
		}
		switch x := m.GetMsg().(type) {
		case *agentv1.ConnectResponse_Ack:
			a.onAck(x.Ack)
		case *agentv1.ConnectResponse_Checks:
			a.onAssignment(x.Checks)
		case *agentv1.ConnectResponse_Task:
			a.onTask(x.Task)
		case *agentv1.ConnectResponse_TaskAck:
			a.onTaskAck(x.TaskAck)
		}
	}
}

func (a *simAgent) onAck(ack *agentv1.BatchAck) {
	now := time.Now()
	a.mu.Lock()
	var b sentBatch
	found := false
	for i := range a.inflight {
		if a.inflight[i].id == ack.GetBatchId() {
			b, found = a.inflight[i], true
			a.inflight = append(a.inflight[:i], a.inflight[i+1:]...)
			break
		}
	}
	a.trimOutbox(ack.GetAckedThrough())
	a.mu.Unlock()
	if found {
		a.s.ackHist.Load().RecordN(now.Sub(b.at), uint64(b.n))
		if tl := a.s.timeline.Load(); tl != nil {
			tl.record(now, now.Sub(b.at), uint64(b.n))
		}
		a.s.c.BatchesAcked.Add(1)
		a.s.c.Acked.Add(uint64(b.n))
		stored := min(uint64(ack.GetStored()), uint64(b.n))
		a.s.c.Stored.Add(stored)
		a.s.c.Duplicates.Add(uint64(b.n) - stored)
	}
	a.poke()
}

func (a *simAgent) onAssignment(ca *agentv1.CheckAssignment) {
	now := time.Now()
	a.mu.Lock()
	checks := make([]*simCheck, 0, len(ca.GetChecks()))
	byName := make(map[string]*simCheck, len(ca.GetChecks()))
	for _, spec := range ca.GetChecks() {
		iv := spec.GetInterval().AsDuration()
		if iv < time.Second {
			iv = time.Second
		}
		c, ok := a.byName[spec.GetId()]
		if !ok {
			// The first run is jittered over one interval, as the agent's
			// scheduler does; aligned, all checks of the agent share it.
			first := now.Add(time.Duration(a.rnd.Int64N(int64(iv))))
			if a.s.aligned {
				if a.anchor.IsZero() {
					a.anchor = first
				}
				first = a.anchor
				for first.Before(now) {
					first = first.Add(iv)
				}
			}
			c = &simCheck{id: spec.GetId(), next: first}
		}
		c.version, c.interval = spec.GetPolicyVersion(), iv
		checks = append(checks, c)
		byName[c.id] = c
	}
	a.checks, a.byName = checks, byName
	a.mu.Unlock()
	a.poke()
}

// onTask verifies a signed task as tend-agent does (signature against the
// pinned keys, addressee, sequence above the high-water mark), "runs" it at
// once (the simulated check passes again), and reports it running and
// succeeded.
func (a *simAgent) onTask(td *agentv1.TaskDelivery) {
	t, err := task.OpenTask(td.GetEnvelope(), a.s.keys)
	if err != nil || t.GetAgentId() != a.id.ID {
		a.s.c.TaskRejects.Add(1)
		return
	}
	now := time.Now()
	a.mu.Lock()
	if t.GetSeq() <= a.taskHW {
		a.mu.Unlock()
		a.s.c.TaskDuplicates.Add(1)
		return
	}
	a.taskHW = t.GetSeq()
	var trig time.Time
	if c := a.byName[t.GetPolicy()]; c != nil {
		trig = c.trigSent
		c.failing, c.failCount, c.trigSent = false, 0, time.Time{}
	}
	a.updates = append(a.updates,
		&pendingUpdate{trigSent: trig, u: &agentv1.TaskUpdate{TaskId: t.GetTaskId(), Seq: t.GetSeq(), State: agentv1.TaskState_TASK_STATE_RUNNING, At: timestamppb.New(now)}},
		&pendingUpdate{u: &agentv1.TaskUpdate{TaskId: t.GetTaskId(), Seq: t.GetSeq(), State: agentv1.TaskState_TASK_STATE_SUCCEEDED, At: timestamppb.New(now), Output: "tend-bench: done"}},
	)
	a.mu.Unlock()
	a.s.c.Tasks.Add(1)
	a.poke()
}

func (a *simAgent) onTaskAck(ack *agentv1.TaskUpdateAck) {
	a.mu.Lock()
	for i, u := range a.updates {
		if u.u.GetTaskId() == ack.GetTaskId() && u.u.GetState() == ack.GetState() {
			a.updates = append(a.updates[:i], a.updates[i+1:]...)
			break
		}
	}
	a.mu.Unlock()
	a.s.c.TaskUpdatesAcked.Add(1)
}

// timeline keeps, per second of the measurement window, the results
// acknowledged and the slowest acknowledgement: stalls show up there.
type timeline struct {
	start time.Time
	secs  [3600]struct {
		acked atomic.Uint64
		max   atomic.Int64
	}
}

func (t *timeline) record(now time.Time, d time.Duration, n uint64) {
	i := int(now.Sub(t.start) / time.Second)
	if i < 0 || i >= len(t.secs) {
		return
	}
	t.secs[i].acked.Add(n)
	for {
		m := t.secs[i].max.Load()
		if int64(d) <= m || t.secs[i].max.CompareAndSwap(m, int64(d)) {
			return
		}
	}
}

// Second is one second of the window.
type Second struct {
	Second   int     `json:"second"`
	Acked    uint64  `json:"acked"`
	AckMaxMs float64 `json:"ackMaxMs"`
}

func (t *timeline) seconds(n int) []Second {
	out := make([]Second, 0, n)
	for i := 0; i < n && i < len(t.secs); i++ {
		out = append(out, Second{Second: i, Acked: t.secs[i].acked.Load(), AckMaxMs: ms(time.Duration(t.secs[i].max.Load()))})
	}
	return out
}
