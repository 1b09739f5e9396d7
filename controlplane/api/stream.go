package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/controlplane/fleet"
	"tend.dev/tend/controlplane/ingest"
	"tend.dev/tend/controlplane/keys"
	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/internal/failpoint"
	"tend.dev/tend/internal/task"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Limits on what an agent may send.
const (
	MaxBatchResults = 5000
	MaxCheckIDLen   = 256
	MaxOutputLen    = 4096
	MaxMetrics      = 64
	maxInFlightAcks = 32
	helloTimeout    = 10 * time.Second
	// sessionQueueSize bounds the messages queued for one agent: acks (at
	// most maxInFlightAcks batches in flight), heartbeat acks, tasks and
	// pushes; the writer drains it as fast as the connection allows.
	sessionQueueSize = 64
)

// Stream implements tend.agent.v1.AgentService.
type Stream struct {
	agentv1.UnsafeAgentServiceServer

	Store    store.Store
	Fleet    *fleet.Registry
	Ingest   *ingest.Committer
	Policies *PolicySet
	// Remediation receives durable results, task updates and connects.
	Remediation Remediation
	// Keys, if set, is sent to each agent after Welcome (the task-signing
	// keys to accept) and told which keys each agent holds.
	Keys    *keys.Ring
	Log     *slog.Logger
	Now     func() time.Time
	Streams prometheus.Gauge
}

var errCertExpired = errors.New("the client certificate this stream was opened with expired: reconnect with the renewed one")

// Remediation is the remediation loop as the stream handler sees it.
type Remediation interface {
	// OnResults gets results that were just made durable (new ones only).
	OnResults(agentID string, results []*agentv1.CheckResult)
	// OnBacklogResults gets durable results the agent had before its
	// stream opened: they may verify an incident but never trigger one.
	OnBacklogResults(agentID string, results []*agentv1.CheckResult)
	// OnConnect is told the agent's task high-water mark on every connect.
	OnConnect(agentID string, taskHighWater uint64)
	// OnAutonomousRun records what the agent did alone under a standing
	// order, durably, before it is acknowledged.
	OnAutonomousRun(ctx context.Context, agentID string, run *agentv1.AutonomousRun) error
	// OnTaskUpdate records a task update durably; the update is
	// acknowledged to the agent only when it returns nil.
	OnTaskUpdate(ctx context.Context, agentID string, u *agentv1.TaskUpdate) error
}

type recvResult struct {
	msg *agentv1.ConnectRequest
	err error
}

// Connect runs one agent's stream on two goroutines: the handler, which
// waits for the stream to end (it must be free to return, which is how a
// stream is ended from this side), and one reader, which reads Hello and
// then every message. Messages to the agent are written by a writer that
// runs only while the session's queue has something in it (writer), so an
// idle stream costs no third goroutine (docs/BENCHMARKS.md, T2).
func (h *Stream) Connect(stream agentv1.AgentService_ConnectServer) error {
	ctx := stream.Context()
	id, ok := IdentityFrom(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "no identity")
	}

	// The reader reads Hello first, hands it over, and goes on reading
	// once the session is set up (start), or stops if the stream ended.
	first := make(chan recvResult, 1)
	start := make(chan *readerState, 1)
	readErr := make(chan error, 1)
	// The reader handles every message the agent sends (hostile input): a
	// panic there ends this stream with Internal, not the control plane.
	recoverGo(h.Log, agentv1.AgentService_Connect_FullMethodName, readErr, func() {
		m, err := stream.Recv()
		first <- recvResult{m, err}
		if err != nil {
			return
		}
		var rs *readerState
		select {
		case rs = <-start:
			rs.sess.Release() // the setup's Hold
		case <-ctx.Done():
			return
		}
		readErr <- h.read(stream, rs)
	})

	// The first message must be Hello.
	var hello *agentv1.Hello
	helloTimer := time.NewTimer(helloTimeout)
	select {
	case r := <-first:
		helloTimer.Stop()
		if r.err != nil {
			return r.err
		}
		hello = r.msg.GetHello()
		if hello == nil {
			return status.Error(codes.InvalidArgument, "the first message on the agent stream must be hello")
		}
	case err := <-readErr: // a panic
		helloTimer.Stop()
		return err
	case <-helloTimer.C:
		return status.Error(codes.DeadlineExceeded, "no hello within 10s")
	case <-ctx.Done():
		helloTimer.Stop()
		return ctx.Err()
	}
	if err := ValidateHello(hello); err != nil {
		return status.Error(codes.InvalidArgument, "hello: "+err.Error())
	}

	sess := fleet.NewSession(ctx, id.ID, sessionQueueSize)
	w := &writer{sess: sess, stream: stream}
	sess.SetNotify(w.kick)
	// Until the reader starts, the agent's messages after Hello wait for
	// this setup: held, as a message being handled is.
	sess.Hold()
	agent, err := h.Fleet.Attach(id.ID, sess, hello, h.Now())
	if errors.Is(err, fleet.ErrStopping) {
		return status.Error(codes.Unavailable, err.Error())
	}
	if err != nil {
		return toStatus(err)
	}
	defer h.Fleet.Detach(id.ID, sess)
	// The stream ends when the certificate it was opened with expires; the
	// agent reconnects with its renewed one.
	expiry := time.AfterFunc(time.Until(id.Expiry), func() { sess.Close(errCertExpired) })
	defer expiry.Stop()
	if h.Streams != nil {
		h.Streams.Inc()
		defer h.Streams.Dec()
	}
	counters, err := h.Store.Counters(id.ID)
	if err != nil {
		return toStatus(err)
	}
	// Attributes on each log line rather than a logger per stream (slog's
	// With keeps a copy per stream, for the stream's whole life).
	h.Log.Info("agent connected", "agent_id", id.ID, "agent", agent.Name, "version", hello.GetVersion(), "outbox_pending", hello.GetOutboxPending(), "acked_through", counters.HighWater)

	sess.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Welcome{Welcome: &agentv1.Welcome{
		AgentId:             id.ID,
		Name:                agent.Name,
		HeartbeatInterval:   durationpb.New(h.Fleet.HeartbeatInterval()),
		HeartbeatTtl:        durationpb.New(h.Fleet.TTL()),
		ServerTime:          timestamppb.New(h.Now()),
		ResultsAckedThrough: counters.HighWater,
	}}})
	if h.Keys != nil {
		// Before any task: the agent must know the keys that sign them.
		h.Keys.NoteHolder(id.ID, hello.GetSigningKeyIds())
		sess.Send(SigningKeySet(h.Keys))
	}
	sess.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Checks{Checks: h.Policies.Assignment(agent.Labels)}})
	if h.Keys != nil {
		sess.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_StandingOrders{StandingOrders: h.Policies.StandingOrders(id.ID, agent.Labels, h.Keys.Active(), h.Now())}})
	}
	if h.Remediation != nil {
		h.Remediation.OnConnect(id.ID, hello.GetTaskSeqHighWater())
	}

	start <- &readerState{
		sess:    sess,
		agentID: id.ID,
		// Bounded acks in flight give back-pressure to a fast agent.
		inflight: make(chan struct{}, maxInFlightAcks),
		// lastSeq chains batches: each must follow one that was stored.
		lastSeq: counters.HighWater,
		// Results the agent had before this stream opened are old news:
		// stored, but not evaluated for triggers (a check that still fails
		// fails again in its next, fresh results).
		backlog: hello.GetResultsThrough(),
	}

	select {
	case err := <-readErr:
		sess.Close(err)
		if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
			h.Log.Info("agent disconnected", "agent_id", id.ID, "agent", agent.Name)
			return nil
		}
		h.Log.Info("agent stream ended", "agent_id", id.ID, "agent", agent.Name, "err", err)
		return err
	case <-sess.Context().Done():
		cause := context.Cause(sess.Context())
		if werr := w.err(); werr != nil {
			h.Log.Info("agent stream send failed", "agent_id", id.ID, "agent", agent.Name, "err", werr)
			return werr
		}
		h.Log.Info("agent stream closed by control plane", "agent_id", id.ID, "agent", agent.Name, "reason", cause)
		if errors.Is(cause, fleet.ErrRevoked) {
			return status.Error(codes.PermissionDenied, cause.Error())
		}
		return status.Error(codes.Unavailable, fmt.Sprint(cause))
	}
}

// writer sends the session's queued messages on the stream. It runs on a
// goroutine of its own only while the queue is not empty: kick starts it
// (Session.SetNotify), and it exits when it finds the queue empty. gRPC
// allows one sender at a time: running is held by the one goroutine that
// may send.
type writer struct {
	sess    *fleet.Session
	stream  agentv1.AgentService_ConnectServer
	running atomic.Bool
	failed  atomic.Pointer[error]
}

func (w *writer) kick() {
	if w.running.CompareAndSwap(false, true) {
		go w.run()
	}
}

func (w *writer) run() {
	out := w.sess.Out()
	done := w.sess.Context().Done()
	for {
		select {
		case <-done:
			return // running stays set: nothing is sent any more
		case m := <-out:
			if err := w.stream.Send(m); err != nil {
				w.failed.Store(&err)
				w.sess.Close(err)
				return
			}
		default:
			w.running.Store(false)
			// A message queued after the empty check and before the store
			// found running set and started nobody: take it, unless its
			// kick already started another writer.
			if len(out) == 0 || !w.running.CompareAndSwap(false, true) {
				return
			}
		}
	}
}

func (w *writer) err() error {
	if p := w.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// readerState is what the reader needs once the session is set up.
type readerState struct {
	sess     *fleet.Session
	agentID  string
	inflight chan struct{}
	lastSeq  uint64
	backlog  uint64
}

// read handles the agent's messages until the stream or the session ends.
// Each message is held (Session.Hold) from the moment it is read until the
// control plane is done with it (a result batch: until it is committed),
// so that the agent is not marked down while its later messages wait
// behind it.
func (h *Stream) read(stream agentv1.AgentService_ConnectServer, rs *readerState) error {
	sess := rs.sess
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		if err := sess.Context().Err(); err != nil {
			// The session was closed (revoked, replaced, shut down): the
			// stream is ending, nothing more is handled on it.
			return context.Cause(sess.Context())
		}
		h.Fleet.Seen(rs.agentID, h.Now())
		sess.Hold()
		err = h.handle(sess, rs.agentID, m, rs.inflight, &rs.lastSeq, rs.backlog)
		if err != nil {
			return err
		}
	}
}

// handle handles one message, which the caller holds (Session.Hold): handle
// releases it, at once or, for a result batch handed to the ingest, once
// it is committed.
func (h *Stream) handle(sess *fleet.Session, agentID string, m *agentv1.ConnectRequest, inflight chan struct{}, lastSeq *uint64, backlog uint64) error {
	release := true
	defer func() {
		if release {
			sess.Release()
		}
	}()
	switch msg := m.GetMsg().(type) {
	case *agentv1.ConnectRequest_Heartbeat:
		h.Fleet.NoteDropped(agentID, msg.Heartbeat.GetOutboxDroppedTotal())
		if ids := msg.Heartbeat.GetSigningKeyIds(); len(ids) > 0 && h.Keys != nil {
			if err := ValidateKeyIDs(ids); err != nil {
				return status.Errorf(codes.InvalidArgument, "heartbeat: %v", err)
			}
			h.Keys.NoteHolder(agentID, ids)
		}
		// Not answered: a heartbeat only resets the agent's liveness timer
		// (any message does), and the agent finds a dead connection
		// through gRPC keepalive. An answer cost a TLS write per agent
		// every few seconds for nothing (HeartbeatAck is no longer sent).
	case *agentv1.ConnectRequest_Results:
		b := msg.Results
		if err := ValidateBatch(b); err != nil {
			return status.Errorf(codes.InvalidArgument, "result batch %d: %v", b.GetBatchId(), err)
		}
		h.Fleet.NoteDropped(agentID, b.GetOutboxDroppedTotal())
		select {
		case inflight <- struct{}{}:
		case <-sess.Context().Done():
			return sess.Context().Err()
		}
		batchID := b.GetBatchId()
		results := b.GetResults()
		after := *lastSeq
		*lastSeq = results[len(results)-1].GetSeq()
		release = false // held until committed
		h.Ingest.SubmitAsync(store.ResultBatch{AgentID: agentID, Results: results, OutboxDropped: b.GetOutboxDroppedTotal(), After: after},
			func(out store.CommitOutcome, err error) {
				<-inflight
				sess.Release()
				if err != nil {
					// Not acknowledged: the agent keeps the batch and resends.
					h.Log.Error("commit results", "agent_id", agentID, "batch_id", batchID, "err", err)
					sess.Close(fmt.Errorf("results not stored: %w", err))
					return
				}
				failpoint.Inject(failpoint.CPAfterBatchCommit)
				// Results are in seq order and duplicates are those at or
				// below the old high-water mark: the new ones are the last.
				if h.Remediation != nil && out.Stored > 0 && out.Stored <= len(results) {
					fresh := results[len(results)-out.Stored:]
					old := 0
					for old < len(fresh) && fresh[old].GetSeq() <= backlog {
						old++
					}
					if old > 0 {
						h.Remediation.OnBacklogResults(agentID, fresh[:old])
					}
					if old < len(fresh) {
						h.Remediation.OnResults(agentID, fresh[old:])
					}
				}
				sess.TrySend(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Ack{Ack: &agentv1.BatchAck{
					BatchId: batchID, AckedThrough: out.AckedThrough, Stored: uint32(out.Stored),
				}}})
			})
	case *agentv1.ConnectRequest_Hello:
		return status.Error(codes.InvalidArgument, "hello may only be sent once per stream")
	case *agentv1.ConnectRequest_TaskUpdate:
		u := msg.TaskUpdate
		if err := ValidateTaskUpdate(u); err != nil {
			return status.Errorf(codes.InvalidArgument, "task update: %v", err)
		}
		if h.Remediation != nil {
			if err := h.Remediation.OnTaskUpdate(sess.Context(), agentID, u); err != nil {
				// Not acknowledged: the agent keeps it and sends it again.
				h.Log.Error("record task update", "agent_id", agentID, "task", u.GetTaskId(), "err", err)
				return nil
			}
		}
		sess.TrySend(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_TaskAck{TaskAck: &agentv1.TaskUpdateAck{TaskId: u.GetTaskId(), State: u.GetState()}}})
	case *agentv1.ConnectRequest_AutonomousRun:
		run := msg.AutonomousRun
		if err := ValidateAutonomousRun(run); err != nil {
			// Acknowledged and dropped: ending the stream would make the
			// agent send it again first on every session, and never stay
			// connected.
			h.Log.Warn("autonomous run report dropped: invalid", "agent_id", agentID, "run", run.GetRunId(), "err", err)
			sess.TrySend(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_AutonomousAck{AutonomousAck: &agentv1.AutonomousRunAck{RunId: run.GetRunId()}}})
			return nil
		}
		if h.Remediation != nil {
			if err := h.Remediation.OnAutonomousRun(sess.Context(), agentID, run); err != nil {
				// Not acknowledged: the agent keeps it and sends it again.
				h.Log.Error("record autonomous run", "agent_id", agentID, "run", run.GetRunId(), "err", err)
				return nil
			}
		}
		sess.TrySend(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_AutonomousAck{AutonomousAck: &agentv1.AutonomousRunAck{RunId: run.GetRunId()}}})
	default:
		return status.Error(codes.InvalidArgument, "empty or unknown message on the agent stream")
	}
	return nil
}

// Limits on an autonomous run report.
const (
	MaxRunEvents   = 64
	maxEventString = 4096
)

// ValidateAutonomousRun checks the shape of an agent's report; the order in
// it is verified by the remediation loop.
func ValidateAutonomousRun(r *agentv1.AutonomousRun) error {
	switch {
	case r.GetRunId() == "" || len(r.GetRunId()) > MaxTaskIDLen || strings.ContainsAny(r.GetRunId(), "\x00"):
		return fmt.Errorf("run_id: 1 to %d bytes without NUL", MaxTaskIDLen)
	case len(r.GetOrderEnvelope()) == 0 || len(r.GetOrderEnvelope()) > task.MaxEnvelopeBytes:
		return fmt.Errorf("order_envelope: 1 byte to %d bytes", task.MaxEnvelopeBytes)
	case len(r.GetEvents()) > MaxRunEvents:
		return fmt.Errorf("events: %d (max %d)", len(r.GetEvents()), MaxRunEvents)
	case len(r.GetOutput()) > MaxOutputLen || len(r.GetReason()) > maxEventString:
		return errors.New("output or reason too long")
	}
	switch r.GetState() {
	case agentv1.TaskState_TASK_STATE_SUCCEEDED, agentv1.TaskState_TASK_STATE_FAILED, agentv1.TaskState_TASK_STATE_REJECTED:
	default:
		return fmt.Errorf("state %s: want succeeded, failed or rejected", r.GetState())
	}
	for i, e := range r.GetEvents() {
		if e.GetAt() == nil || len(e.GetKind()) == 0 || len(e.GetKind()) > 32 || len(e.GetMessage()) > maxEventString {
			return fmt.Errorf("events[%d]: needs at, a kind of 1-32 bytes and a message of at most %d bytes", i, maxEventString)
		}
	}
	return nil
}

// Results must be stamped between 2000 and 2200.
const (
	minResultTime = 946684800  // 2000-01-01
	maxResultTime = 7258118400 // 2200-01-01
)

// ValidateHello checks the metadata an agent sends on connect.
func ValidateHello(h *agentv1.Hello) error {
	if err := ValidateLabels(h.GetLabels()); err != nil {
		return err
	}
	if len(h.GetFacts()) > 64 {
		return fmt.Errorf("too many facts: %d (max 64)", len(h.GetFacts()))
	}
	for k, v := range h.GetFacts() {
		if len(k) > 63 || len(v) > 1024 || strings.ContainsAny(k+v, "\x00") {
			return fmt.Errorf("fact %.63q: key over 63 or value over 1024 characters, or NUL", k)
		}
	}
	if len(h.GetVersion()) > 64 {
		return errors.New("version: longer than 64 characters")
	}
	if len(h.GetLocalChecks()) > 256 {
		return fmt.Errorf("too many local checks: %d (max 256)", len(h.GetLocalChecks()))
	}
	return ValidateKeyIDs(h.GetSigningKeyIds())
}

// MaxKeyIDs is the most signing key ids an agent may report.
const MaxKeyIDs = 16

// ValidateKeyIDs checks the signing key ids an agent reports holding.
func ValidateKeyIDs(ids []string) error {
	if len(ids) > MaxKeyIDs {
		return fmt.Errorf("signing_key_ids: %d ids (max %d)", len(ids), MaxKeyIDs)
	}
	for _, id := range ids {
		if len(id) == 0 || len(id) > 64 || strings.ContainsAny(id, "\x00") {
			return fmt.Errorf("signing_key_ids: bad id %.64q", id)
		}
	}
	return nil
}

// MaxTaskIDLen is the longest task id an agent may report.
const MaxTaskIDLen = 128

// ValidateTaskUpdate checks a task update from an agent (hostile input):
// sizes, and metrics that can be stored (finite, named).
func ValidateTaskUpdate(u *agentv1.TaskUpdate) error {
	switch {
	case len(u.GetTaskId()) > MaxTaskIDLen:
		return fmt.Errorf("task id of %d bytes, max %d", len(u.GetTaskId()), MaxTaskIDLen)
	case len(u.GetOutput()) > MaxOutputLen+64:
		return fmt.Errorf("output of %d bytes, max %d", len(u.GetOutput()), MaxOutputLen)
	case len(u.GetReason()) > MaxOutputLen+64:
		return fmt.Errorf("reason of %d bytes, max %d", len(u.GetReason()), MaxOutputLen)
	case len(u.GetMetrics()) > MaxMetrics:
		return fmt.Errorf("%d metrics, max %d", len(u.GetMetrics()), MaxMetrics)
	}
	for k, v := range u.GetMetrics() {
		if k == "" || len(k) > 128 {
			return errors.New("metric name empty or longer than 128")
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("metric %.128q is not a finite number", k)
		}
	}
	return nil
}

// ValidateBatch checks a result batch from an agent (hostile input): size,
// strictly increasing seq, sane check ids, capped output and metrics.
func ValidateBatch(b *agentv1.ResultBatch) error {
	rs := b.GetResults()
	if len(rs) == 0 {
		return errors.New("no results")
	}
	if len(rs) > MaxBatchResults {
		return fmt.Errorf("%d results, max %d", len(rs), MaxBatchResults)
	}
	var prev uint64
	for i, r := range rs {
		switch {
		case r.GetSeq() == 0:
			return fmt.Errorf("result %d: seq must be > 0", i)
		case r.GetSeq() <= prev:
			return fmt.Errorf("result %d: seq %d not above the previous %d", i, r.GetSeq(), prev)
		case r.GetCheckId() == "" || len(r.GetCheckId()) > MaxCheckIDLen || !utf8.ValidString(r.GetCheckId()):
			return fmt.Errorf("result %d: bad check id", i)
		case len(r.GetOutput()) > MaxOutputLen+64:
			return fmt.Errorf("result %d: output of %d bytes, max %d", i, len(r.GetOutput()), MaxOutputLen)
		case len(r.GetMetrics()) > MaxMetrics:
			return fmt.Errorf("result %d: %d metrics, max %d", i, len(r.GetMetrics()), MaxMetrics)
		case r.GetStatus() == agentv1.CheckStatus_CHECK_STATUS_UNSPECIFIED:
			return fmt.Errorf("result %d: status unspecified", i)
		case agentv1.CheckStatus_name[int32(r.GetStatus())] == "":
			return fmt.Errorf("result %d: unknown status %d", i, r.GetStatus())
		case strings.ContainsRune(r.GetCheckId(), 0):
			return fmt.Errorf("result %d: NUL in check id", i)
		case r.GetStartedAt() != nil && (r.GetStartedAt().GetSeconds() < minResultTime || r.GetStartedAt().GetSeconds() > maxResultTime):
			return fmt.Errorf("result %d: started_at %v out of range", i, r.GetStartedAt().AsTime())
		}
		for k, v := range r.GetMetrics() {
			if k == "" || len(k) > 128 {
				return fmt.Errorf("result %d: metric name empty or longer than 128", i)
			}
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return fmt.Errorf("result %d: metric %s is not a finite number", i, k)
			}
		}
		prev = r.GetSeq()
	}
	return nil
}
