package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/internal/failpoint"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

type connectStream = grpc.BidiStreamingClient[agentv1.ConnectRequest, agentv1.ConnectResponse]

var (
	errWelcomeTimeout = errors.New("no Welcome from the control plane in time")
	errServerClosed   = errors.New("control plane closed the stream")
)

// session runs one connection from dial to its end. It returns how long the
// session was up after Welcome (0 if it never got one) and why it ended.
func (c *Client) session(ctx context.Context) (time.Duration, error) {
	c.connectAttempts.Add(1)
	conn, err := c.cfg.Dial(ctx)
	if err != nil {
		return 0, fmt.Errorf("dial control plane: %w", err)
	}
	defer conn.Close()

	// The stream's context is not ctx: on shutdown the sender half-closes
	// the stream first and gives the control plane a moment to end it.
	sctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancel(nil)
	// Until Welcome, shutdown cancels at once.
	stopEarly := context.AfterFunc(ctx, func() { cancel(ctx.Err()) })
	defer stopEarly()

	stream, err := agentv1.NewAgentServiceClient(conn).Connect(sctx)
	if err != nil {
		return 0, fmt.Errorf("open stream: %w", err)
	}
	welcome, err := c.handshake(sctx, cancel, stream)
	if err != nil {
		return 0, err
	}
	if !stopEarly() {
		return 0, ctx.Err()
	}
	// After Welcome, shutdown is graceful (see send loop), but a Send stuck
	// in flow control is cancelled after closeGrace.
	stopLate := context.AfterFunc(ctx, func() {
		t := time.NewTimer(closeGrace)
		defer t.Stop()
		select {
		case <-t.C:
			cancel(ctx.Err())
		case <-sctx.Done():
		}
	})
	defer stopLate()

	through := welcome.GetResultsAckedThrough()
	if _, _, next := c.cfg.DB.Stats(); through >= next {
		c.log.Warn("control plane has results beyond this agent's sequence; moving the sequence past them",
			"results_acked_through", through, "next_seq", next)
	}
	if err := c.cfg.DB.Ack(through); err != nil {
		return 0, err
	}
	upSince := time.Now()
	c.connects.Add(1)
	c.connected.Store(true)
	defer func() {
		c.setOfflineSince(time.Now())
		c.connected.Store(false)
	}()
	pending, dropped, _ := c.cfg.DB.Stats()
	hb := welcome.GetHeartbeatInterval().AsDuration()
	if hb <= 0 {
		hb = DefaultHeartbeatInterval
	}
	hb = max(hb, minHeartbeatInterval)
	c.log.Info("connected to control plane",
		"agent_id", welcome.GetAgentId(), "name", welcome.GetName(),
		"heartbeat_interval", hb, "results_acked_through", through,
		"outbox_pending", pending, "outbox_dropped_total", dropped)
	if c.cfg.OnWelcome != nil {
		c.cfg.OnWelcome(welcome)
	}

	win := &window{wake: make(chan struct{}, 1)}
	recvErr := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		recvErr <- c.receive(stream, win)
	}()
	err = c.sendLoop(ctx, stream, win, recvErr, hb)
	if errors.Is(err, io.EOF) {
		// Send only says EOF when the stream is over; the receiver has
		// the status that says why.
		t := time.NewTimer(closeGrace)
		select {
		case rerr := <-recvErr:
			err = fmt.Errorf("%w (%w)", err, rerr)
		case <-t.C:
		}
		t.Stop()
	}
	cancel(err)
	wg.Wait()
	return time.Since(upSince), err
}

// handshake sends Hello and waits for Welcome.
func (c *Client) handshake(sctx context.Context, cancel context.CancelCauseFunc, stream connectStream) (*agentv1.Welcome, error) {
	hello := c.cfg.Hello()
	if hello == nil {
		hello = &agentv1.Hello{}
	}
	var nextSeq uint64
	hello.OutboxPending, hello.OutboxDroppedTotal, nextSeq = c.cfg.DB.Stats()
	if nextSeq > 0 {
		hello.ResultsThrough = nextSeq - 1
	}
	hello.TaskSeqHighWater = c.cfg.DB.TaskHighWater()
	if c.cfg.KeyIDs != nil {
		hello.SigningKeyIds = c.cfg.KeyIDs()
	}
	if err := stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: hello}}); err != nil {
		return nil, fmt.Errorf("send hello: %w", streamErr(sctx, stream, err))
	}
	timer := time.AfterFunc(c.cfg.WelcomeTimeout, func() { cancel(errWelcomeTimeout) })
	msg, err := stream.Recv()
	timer.Stop()
	if err != nil {
		if errors.Is(context.Cause(sctx), errWelcomeTimeout) {
			return nil, fmt.Errorf("%w (waited %s)", errWelcomeTimeout, c.cfg.WelcomeTimeout)
		}
		return nil, fmt.Errorf("wait for welcome: %w", recvError(err))
	}
	w := msg.GetWelcome()
	if w == nil {
		return nil, fmt.Errorf("protocol error: first message from the control plane is %T, want Welcome", msg.GetMsg())
	}
	return w, nil
}

// streamErr turns the io.EOF that Send returns when the stream has ended
// into the stream's real status.
func streamErr(sctx context.Context, stream connectStream, err error) error {
	if !errors.Is(err, io.EOF) {
		return err
	}
	if _, rerr := stream.Recv(); rerr != nil {
		return recvError(rerr)
	}
	if cause := context.Cause(sctx); cause != nil {
		return cause
	}
	return err
}

func recvError(err error) error {
	if errors.Is(err, io.EOF) {
		return errServerClosed
	}
	return err
}

// sendLoop is the only goroutine that sends on the stream after Welcome.
//
// It sends a heartbeat only when it has sent nothing else for a heartbeat
// interval: the control plane takes any message as a sign of life
// (controlplane/fleet), and a connection that died is found by gRPC's
// keepalive. A heartbeat that reports changed signing keys is not skipped.
func (c *Client) sendLoop(ctx context.Context, raw connectStream, win *window, recvErr <-chan error, hb time.Duration) error {
	stream := &countingStream{connectStream: raw}
	var sends uint64                                // stream.sent when hbTimer was last reset
	var lastSent uint64                             // every session starts from the first unacked result
	tasks := &taskSends{at: map[uint64]time.Time{}} // ... and from the first unacked task update
	autoSent := map[string]bool{}                   // run reports sent on this session
	runsGen := c.runsGen.Load() - 1                 // read them once at the start
	hbTimer := time.NewTimer(c.jitter(hb))
	defer hbTimer.Stop()
	// Results already in the outbox at the start never linger.
	_, _, next := c.cfg.DB.Stats()
	lg := &linger{noWaitThrough: next - 1}
	lingerTimer := time.NewTimer(time.Hour)
	lingerTimer.Stop()
	defer lingerTimer.Stop()
	poll := time.NewTicker(c.cfg.PollInterval)
	defer poll.Stop()
	for {
		// Task updates first: they are few and someone is waiting for them.
		if err := c.sendTaskUpdates(stream, tasks); err != nil {
			return err
		}
		if g := c.runsGen.Load(); g != runsGen {
			runsGen = g
			if err := c.sendAutonomousRuns(stream, autoSent); err != nil {
				return err
			}
		}
		wait, err := c.fill(stream, win, &lastSent, lg)
		if err != nil {
			return err
		}
		if wait > 0 {
			lingerTimer.Reset(wait)
		} else {
			lingerTimer.Stop()
		}
		if stream.sent != sends {
			sends = stream.sent
			if !c.keysChanged.Load() {
				resetTimer(hbTimer, c.jitter(hb))
			}
		}
		if id, sentAt, ok := win.oldest(); ok && time.Since(sentAt) > c.cfg.AckTimeout {
			return fmt.Errorf("no ack for batch %d within %s", id, c.cfg.AckTimeout)
		}
		select {
		case <-ctx.Done():
			c.log.Info("closing control plane stream")
			_ = stream.CloseSend()
			t := time.NewTimer(closeGrace)
			select {
			case <-recvErr:
			case <-t.C:
			}
			t.Stop()
			return ctx.Err()
		case err := <-recvErr:
			return err
		case <-c.notify:
		case <-win.wake:
		case <-poll.C:
		case <-lingerTimer.C:
		case <-hbTimer.C:
			pending, dropped, _ := c.cfg.DB.Stats()
			beat := &agentv1.Heartbeat{
				SentAt:             timestamppb.Now(),
				OutboxPending:      pending,
				OutboxDroppedTotal: dropped,
			}
			if c.keysChanged.Swap(false) && c.cfg.KeyIDs != nil {
				beat.SigningKeyIds = c.cfg.KeyIDs()
			}
			err := stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Heartbeat{Heartbeat: beat}})
			if err != nil {
				return fmt.Errorf("send heartbeat: %w", err)
			}
			c.heartbeatsSent.Add(1)
			sends = stream.sent
			hbTimer.Reset(c.jitter(hb))
		}
	}
}

// countingStream counts the messages sent, for the heartbeat timer. Only
// the send loop sends, so the count needs no lock.
type countingStream struct {
	connectStream
	sent uint64
}

func (s *countingStream) Send(m *agentv1.ConnectRequest) error {
	err := s.connectStream.Send(m)
	if err == nil {
		s.sent++
	}
	return err
}

// resetTimer resets a timer that may have fired without being drained.
func resetTimer(t *time.Timer, d time.Duration) {
	t.Stop()
	t.Reset(d)
}

// jitter spreads d by ±10%.
func (c *Client) jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (1 + 0.1*(2*c.rand()-1)))
}

// allOK reports whether every result passed: only those may linger. A
// result that is not OK may complete a trigger, and goes at once.
func allOK(rs []*agentv1.CheckResult) bool {
	for _, r := range rs {
		if r.GetStatus() != agentv1.CheckStatus_CHECK_STATUS_OK {
			return false
		}
	}
	return true
}

// linger is the send loop's state for Config.Linger.
type linger struct {
	noWaitThrough uint64    // results up to this seq never wait
	seq           uint64    // the oldest unsent result seen waiting...
	since         time.Time // ... and since when
}

// fill sends batches from the outbox while the window has room. When fewer
// than a full batch are unsent and the oldest of them has waited less than
// Config.Linger, it sends nothing and returns how much longer to wait.
func (c *Client) fill(stream connectStream, win *window, lastSent *uint64, lg *linger) (time.Duration, error) {
	for win.inFlight() < c.cfg.MaxInFlight {
		rs, err := c.cfg.DB.Pending(*lastSent, c.cfg.BatchMax)
		if err != nil {
			return 0, err
		}
		if len(rs) == 0 {
			return 0, nil
		}
		n := len(rs)
		rs = capBytes(rs, c.cfg.BatchMaxBytes)
		full := len(rs) >= c.cfg.BatchMax || len(rs) < n
		if first := rs[0].GetSeq(); c.cfg.Linger > 0 && !full && first > lg.noWaitThrough && allOK(rs) {
			now := time.Now()
			if lg.seq != first {
				lg.seq, lg.since = first, now
			}
			if wait := c.cfg.Linger - now.Sub(lg.since); wait > 0 {
				return wait, nil
			}
		}
		_, dropped, _ := c.cfg.DB.Stats()
		b := sentBatch{
			id:     c.batchID.Add(1),
			first:  rs[0].GetSeq(),
			last:   rs[len(rs)-1].GetSeq(),
			n:      len(rs),
			sentAt: time.Now(),
		}
		win.add(b) // before Send, so that a quick ack finds it
		err = stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Results{Results: &agentv1.ResultBatch{
			BatchId:            b.id,
			Results:            rs,
			OutboxDroppedTotal: dropped,
		}}})
		if err != nil {
			return 0, fmt.Errorf("send batch %d (seq %d-%d): %w", b.id, b.first, b.last, err)
		}
		*lastSent = b.last
		c.batchesSent.Add(1)
		c.resultsSent.Add(uint64(len(rs)))
		c.log.Debug("sent results", "batch_id", b.id, "first_seq", b.first, "last_seq", b.last, "count", b.n)
	}
	return 0, nil
}

// taskUpdateBatch is how many task updates are read from the outbox at once.
const taskUpdateBatch = 256

// taskSends tracks the task updates sent in one session.
type taskSends struct {
	last uint64               // outbox key of the last update sent
	at   map[uint64]time.Time // when each unacknowledged update was sent
}

// sendAutonomousRuns sends the run reports not yet sent on this session;
// the agent keeps each until acknowledged, and a new session sends it
// again.
func (c *Client) sendAutonomousRuns(stream connectStream, sent map[string]bool) error {
	if c.cfg.AutonomousRuns == nil {
		return nil
	}
	runs, err := c.cfg.AutonomousRuns()
	if err != nil {
		c.log.Error("cannot read the autonomous run reports", "err", err)
		return nil
	}
	for _, r := range runs {
		if sent[r.GetRunId()] {
			continue
		}
		if err := stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_AutonomousRun{AutonomousRun: r}}); err != nil {
			return fmt.Errorf("send autonomous run %s: %w", r.GetRunId(), err)
		}
		sent[r.GetRunId()] = true
		c.log.Info("autonomous run reported", "run", r.GetRunId())
	}
	return nil
}

// sendTaskUpdates sends every pending task update written after the last one
// sent, oldest first. Updates stay in the outbox until a TaskUpdateAck; a new
// session sends all of them again, and so does this one when the oldest
// has waited TaskResendInterval for its ack (the control plane does not ack
// an update it could not record).
func (c *Client) sendTaskUpdates(stream connectStream, ts *taskSends) error {
	oldest, err := c.cfg.DB.TaskUpdatesAfter(0, 1)
	if err != nil {
		return err
	}
	if len(oldest) == 0 {
		clear(ts.at)
		return nil
	}
	for k := range ts.at {
		if k < oldest[0].Key {
			delete(ts.at, k) // acknowledged
		}
	}
	if sentAt, ok := ts.at[oldest[0].Key]; ok && time.Since(sentAt) > c.cfg.TaskResendInterval {
		c.log.Warn("task updates not acknowledged in time; sending them again",
			"task_id", oldest[0].Update.GetTaskId(), "state", oldest[0].Update.GetState(), "waited", time.Since(sentAt).Round(time.Millisecond))
		ts.last = 0
		clear(ts.at)
	}
	for {
		es, err := c.cfg.DB.TaskUpdatesAfter(ts.last, taskUpdateBatch)
		if err != nil {
			return err
		}
		for _, e := range es {
			u := e.Update
			failpoint.Inject(failpoint.AgentBeforeTaskReport)
			if err := stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_TaskUpdate{TaskUpdate: u}}); err != nil {
				return fmt.Errorf("send task update %s (%s): %w", u.GetTaskId(), u.GetState(), err)
			}
			ts.last = e.Key
			ts.at[e.Key] = time.Now()
			c.taskUpdatesSent.Add(1)
			c.log.Debug("sent task update", "task_id", u.GetTaskId(), "seq", u.GetSeq(), "state", u.GetState())
		}
		if len(es) < taskUpdateBatch {
			return nil
		}
	}
}

// capBytes keeps the longest prefix of rs whose encoded size fits in max
// bytes, and at least one result.
func capBytes(rs []*agentv1.CheckResult, maxBytes int) []*agentv1.CheckResult {
	size := 0
	for i, r := range rs {
		size += proto.Size(r)
		if size > maxBytes && i > 0 {
			return rs[:i]
		}
	}
	return rs
}

// receive reads the stream until it fails. It runs on its own goroutine and
// never sends.
func (c *Client) receive(stream connectStream, win *window) error {
	for {
		msg, err := stream.Recv()
		if err != nil {
			return recvError(err)
		}
		switch m := msg.GetMsg().(type) {
		case *agentv1.ConnectResponse_Ack:
			if err := c.handleAck(m.Ack, win); err != nil {
				return err
			}
		case *agentv1.ConnectResponse_Checks:
			c.assignments.Add(1)
			c.log.Info("check assignment received", "generation", m.Checks.GetGeneration(), "checks", len(m.Checks.GetChecks()))
			if c.cfg.OnAssignment != nil {
				c.cfg.OnAssignment(m.Checks)
			}
		case *agentv1.ConnectResponse_Task:
			c.tasks.Add(1)
			failpoint.Inject(failpoint.AgentAfterTaskReceive)
			if c.cfg.OnTask != nil {
				c.cfg.OnTask(m.Task)
			} else {
				c.log.Warn("task delivery ignored: this agent does not run tasks")
			}
		case *agentv1.ConnectResponse_TaskAck:
			if err := c.cfg.DB.AckTaskUpdate(m.TaskAck.GetTaskId(), m.TaskAck.GetState()); err != nil {
				return err
			}
			c.taskUpdatesAcked.Add(1)
			c.log.Debug("task update acknowledged", "task_id", m.TaskAck.GetTaskId(), "state", m.TaskAck.GetState())
		case *agentv1.ConnectResponse_SigningKeys:
			if c.cfg.OnSigningKeys == nil {
				break
			}
			changed, err := c.cfg.OnSigningKeys(m.SigningKeys)
			if err != nil {
				// Keep the keys held: tasks signed with a key the agent
				// does not hold are rejected, which is the safe side.
				c.log.Error("signing key set from the control plane refused", "err", err)
				break
			}
			if changed {
				c.log.Info("task-signing keys updated", "keys", len(m.SigningKeys.GetKeys()))
				c.keysChanged.Store(true)
			}
		case *agentv1.ConnectResponse_StandingOrders:
			if c.cfg.OnStandingOrders != nil {
				c.cfg.OnStandingOrders(m.StandingOrders)
			}
		case *agentv1.ConnectResponse_AutonomousAck:
			if c.cfg.OnAutonomousAck != nil {
				c.cfg.OnAutonomousAck(m.AutonomousAck.GetRunId())
			}
		case *agentv1.ConnectResponse_HeartbeatAck:
		case *agentv1.ConnectResponse_Welcome:
			return errors.New("protocol error: second Welcome on one stream")
		default:
			c.log.Debug("unknown message from control plane ignored", "type", fmt.Sprintf("%T", m))
		}
	}
}

func (c *Client) handleAck(ack *agentv1.BatchAck, win *window) error {
	through, batches, results := win.ack(ack.GetBatchId(), ack.GetAckedThrough())
	if err := c.cfg.DB.Ack(through); err != nil {
		return err
	}
	c.batchesAcked.Add(uint64(batches))
	c.resultsAcked.Add(uint64(results))
	c.log.Debug("results acknowledged", "batch_id", ack.GetBatchId(), "acked_through", ack.GetAckedThrough(), "stored", ack.GetStored())
	select {
	case win.wake <- struct{}{}:
	default:
	}
	return nil
}

// window tracks the batches sent and not yet acknowledged in one session, in
// send order.
type window struct {
	mu      sync.Mutex
	batches []sentBatch
	wake    chan struct{} // a slot was freed
}

type sentBatch struct {
	id, first, last uint64
	n               int
	sentAt          time.Time
	acked           bool
}

func (w *window) add(b sentBatch) {
	w.mu.Lock()
	w.batches = append(w.batches, b)
	w.mu.Unlock()
}

func (w *window) inFlight() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.batches)
}

func (w *window) oldest() (id uint64, sentAt time.Time, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, b := range w.batches {
		if !b.acked {
			return b.id, b.sentAt, true
		}
	}
	return 0, time.Time{}, false
}

// ack marks the batch with id, and every batch ending at or below through,
// acknowledged, and frees the acknowledged batches at the front. It returns
// the seq through which the outbox may be cleared: through, or further when
// the freed batches (sent in seq order, each one durable) reach beyond it.
func (w *window) ack(id, through uint64) (clear uint64, batches, results int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := range w.batches {
		if w.batches[i].id == id || w.batches[i].last <= through {
			w.batches[i].acked = true
		}
	}
	clear = through
	for len(w.batches) > 0 && w.batches[0].acked {
		b := w.batches[0]
		clear = max(clear, b.last)
		batches++
		results += b.n
		w.batches = w.batches[1:]
	}
	return clear, batches, results
}
