// Package tasks is the agent's task runner: it verifies each signed task the
// control plane delivers, checks it against the host's own allow-list, runs
// it through the plugin host, and reports every step as a task update.
//
// Per task, in order:
//
//  1. open the envelope: the signature over the exact bytes received, with a
//     pinned key, and the payload type (internal/task.OpenTask);
//  2. check the task: fields, addressee, sequence above the high-water mark,
//     time window (internal/task.Check);
//  3. persist the new high-water mark (state.DB.AcceptTask, fsync'd). From
//     here on the task's seq is used up, whatever happens next: a genuine
//     task that the allow-list refuses, or that fails, can never be run by
//     sending it again;
//  4. the allow-list from agent.yaml (deny by default);
//  5. the plugin's own parameter validation (Executor.Validate);
//  6. report RUNNING, execute with the task's timeout, report SUCCEEDED or
//     FAILED.
//
// A refusal at any step is reported as REJECTED with a reason that names the
// rule, except a task that arrives after its expiry: EXPIRED. Tasks run one
// at a time in the order received.
//
// A delivery the runner does not take at all (the queue is full, or the
// agent is stopping) is dropped without a report. Its seq is not used up,
// so the task can still run, and a terminal report would contradict that:
// the control plane sends the tasks an agent has not accepted again when it
// reconnects, possibly before it has read the report, and the task would
// then run after it was recorded as rejected. Unreported, the task is sent
// again on the agent's next connect while it is valid, or given up at its
// expiry. A task already accepted when the agent stops is reported FAILED
// (interrupted): it will never run, and the control plane may retry.
package tasks

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/agent/state"
	"tend.dev/tend/internal/failpoint"
	"tend.dev/tend/internal/task"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
	pluginv1 "tend.dev/tend/proto/tend/plugin/v1"
	taskv1 "tend.dev/tend/proto/tend/task/v1"
)

// Defaults for Config.
const (
	DefaultMaxSkew   = 30 * time.Second
	DefaultQueueSize = 16
	// DefaultExecGrace is how long the runner waits beyond a task's
	// timeout for the executor to return (it is the executor's job to
	// enforce the timeout and kill the plugin's process group).
	DefaultExecGrace = 10 * time.Second
	// ValidateTimeout bounds Executor.Validate.
	ValidateTimeout = 10 * time.Second
)

// Caps on what goes into a task update.
const (
	MaxOutputBytes   = 4 << 10
	MaxReasonBytes   = 1 << 10
	MaxMetrics       = 64  // the control plane refuses more
	MaxMetricNameLen = 128 // longer names are dropped
)

// Executor runs actions; agent/pluginhost.Host implements it.
type Executor interface {
	// Validate checks an action's parameters without doing anything.
	Validate(ctx context.Context, action string, params *structpb.Struct) error
	// Execute performs the action; it must give up after timeout.
	Execute(ctx context.Context, action string, params *structpb.Struct, taskID string, timeout time.Duration) (*pluginv1.ExecuteResponse, error)
}

// Config wires a Runner. DB, AgentID, Keys and Exec are required.
type Config struct {
	// DB holds the task high-water mark and the task-update outbox.
	DB *state.DB
	// AgentID is this agent's id (from its certificate): the only
	// addressee it accepts.
	AgentID string
	// Keys returns the pinned task-signing keys by key id (see
	// task.KeyMap). It is called for every task, so a renewal that
	// rotates keys takes effect at once.
	Keys func() map[string]ed25519.PublicKey
	// Allow is the host's allow-list; the zero value denies everything.
	Allow AllowList
	// Exec runs the actions.
	Exec Executor
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Notify is called after every task update is written, to wake the
	// stream (stream.Client.NotifyTasks). It must not block.
	Notify func()
	// Log is the logger (default: discard).
	Log *slog.Logger
	// MaxSkew is the clock difference tolerated at both ends of a task's
	// time window (default 30s; negative: none).
	MaxSkew time.Duration
	// QueueSize bounds the tasks waiting to run (default 16).
	QueueSize int
	// ExecGrace: see DefaultExecGrace.
	ExecGrace time.Duration
}

// Stats are the runner's counters since New.
type Stats struct {
	Received  uint64 // deliveries
	NotTaken  uint64 // dropped unreported: queue full, or stopping
	Rejected  uint64 // reported REJECTED
	Executed  uint64 // Execute calls
	Succeeded uint64
	Failed    uint64
}

// Runner verifies and runs tasks, one at a time.
type Runner struct {
	cfg   Config
	log   *slog.Logger
	queue chan *agentv1.TaskDelivery

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex // guards started, stopped
	started bool
	stopped bool

	received, notTaken, rejected, executed, succeeded, failed atomic.Uint64

	// busy: a task from the control plane is being checked or run.
	busy atomic.Bool
	// execMu: one action at a time, from the control plane or local.
	execMu sync.Mutex
	// ends: when the last control-plane task of each policy ended.
	endsMu sync.Mutex
	ends   map[string]time.Time
}

// New returns a runner; Start starts its worker.
func New(cfg Config) *Runner {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Notify == nil {
		cfg.Notify = func() {}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxSkew == 0 {
		cfg.MaxSkew = DefaultMaxSkew
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.ExecGrace <= 0 {
		cfg.ExecGrace = DefaultExecGrace
	}
	if cfg.Keys == nil {
		cfg.Keys = func() map[string]ed25519.PublicKey { return nil }
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Runner{
		cfg:    cfg,
		log:    cfg.Log.With("component", "tasks"),
		queue:  make(chan *agentv1.TaskDelivery, cfg.QueueSize),
		ctx:    ctx,
		cancel: cancel,
	}
}

// Start reports a task that was interrupted by the agent's last exit, while
// it ran or after it was accepted and before it started (it is not run
// again), then starts the worker. Calling it again does nothing.
func (r *Runner) Start() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started || r.stopped {
		return
	}
	r.started = true
	if it, err := r.cfg.DB.InterruptedTask(); err != nil {
		r.log.Error("cannot read the task that was running at the last exit", "err", err)
	} else if it != nil {
		reason := "interrupted: tend-agent stopped after accepting the task and before starting it; it is not run"
		if it.GetAt() != nil {
			reason = "interrupted: tend-agent stopped while the task was running (started " +
				it.GetAt().AsTime().UTC().Format(time.RFC3339) + "); it is not run again"
		}
		r.log.Warn("a task was interrupted by the agent's last exit; it is not run again", "task_id", it.GetTaskId(), "seq", it.GetSeq(),
			"started", it.GetAt() != nil)
		r.failed.Add(1)
		r.report(it.GetTaskId(), it.GetSeq(), agentv1.TaskState_TASK_STATE_FAILED, reason, "", nil)
	}
	r.wg.Add(1)
	go r.worker()
}

// Stop cancels the task that is running (the executor is asked to stop it;
// it is reported FAILED), drops the tasks still queued (see the package
// comment), and waits for the worker. Calling it again does nothing. Stop
// the runner before closing the DB.
func (r *Runner) Stop() {
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		return
	}
	r.stopped = true
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
	for {
		select {
		case d := <-r.queue:
			r.notTake(d, "tend-agent is stopping")
		default:
			return
		}
	}
}

// Deliver queues a delivery for the worker. It never blocks: when the queue
// is full (or the runner is stopped), the task is dropped unreported at once
// (see the package comment). It is called from the stream's receiving
// goroutine.
func (r *Runner) Deliver(d *agentv1.TaskDelivery) {
	r.received.Add(1)
	why := ""
	r.mu.Lock() // so that nothing is queued after Stop has drained the queue
	if r.stopped {
		why = "tend-agent is stopping"
	} else {
		select {
		case r.queue <- d:
		default:
			why = fmt.Sprintf("busy: %d tasks are already waiting on this agent", cap(r.queue))
		}
	}
	r.mu.Unlock()
	if why != "" {
		r.notTake(d, why)
	}
}

// notTake drops a delivery that was not accepted, without a report: the
// control plane sends it again on the next connect while it is valid.
func (r *Runner) notTake(d *agentv1.TaskDelivery, why string) {
	r.notTaken.Add(1)
	id, seq := task.UntrustedID(d.GetEnvelope())
	r.log.Warn("task not taken: it was not accepted and is not reported; the control plane sends it again when the agent reconnects",
		"task_id", id, "seq", seq, "why", why)
}

// Stats returns the runner's counters.
func (r *Runner) Stats() Stats {
	return Stats{
		Received:  r.received.Load(),
		NotTaken:  r.notTaken.Load(),
		Rejected:  r.rejected.Load(),
		Executed:  r.executed.Load(),
		Succeeded: r.succeeded.Load(),
		Failed:    r.failed.Load(),
	}
}

// stoppedBeforeStart is the reason of a task accepted and then not started
// because the agent is stopping.
const stoppedBeforeStart = "interrupted: tend-agent is stopping; the task was accepted and not started, and it is not run"

func (r *Runner) worker() {
	defer r.wg.Done()
	for {
		select {
		case <-r.ctx.Done():
			return
		case d := <-r.queue:
			if r.ctx.Err() != nil { // both were ready: stopping wins
				r.notTake(d, "tend-agent is stopping")
				return
			}
			r.execMu.Lock()
			r.busy.Store(true)
			r.handle(d)
			r.busy.Store(false)
			r.execMu.Unlock()
		}
	}
}

// handle takes one delivery through every check and, if all pass, runs it.
func (r *Runner) handle(d *agentv1.TaskDelivery) {
	t, err := task.OpenTask(d.GetEnvelope(), r.cfg.Keys())
	if err != nil {
		r.rejectUnopened(d, err)
		return
	}
	id, seq := t.GetTaskId(), t.GetSeq()
	if err := task.Check(t, r.cfg.AgentID, r.cfg.Now(), r.cfg.DB.TaskHighWater(), r.cfg.MaxSkew); err != nil {
		r.reject(id, seq, t.GetAction(), err)
		return
	}
	// The task is genuine, ours, fresh and in its window: use up its seq
	// before anything else can happen.
	if err := r.cfg.DB.AcceptTask(id, seq); err != nil {
		if errors.Is(err, state.ErrTaskReplay) {
			err = task.Reject(task.CodeReplay, "replay: seq %d ≤ high-water mark %d", seq, r.cfg.DB.TaskHighWater())
		} else {
			r.log.Error("cannot persist the task high-water mark; the task is not run", "task_id", id, "seq", seq, "err", err)
			err = fmt.Errorf("agent state: cannot persist the task high-water mark, so the task is not run: %w", err)
		}
		r.reject(id, seq, t.GetAction(), err)
		return
	}
	failpoint.Inject(failpoint.AgentAfterSeqPersist)
	if err := r.cfg.Allow.Check(t.GetAction(), t.GetParams()); err != nil {
		r.reject(id, seq, t.GetAction(), err)
		return
	}
	if r.ctx.Err() != nil {
		r.failStopping(id, seq)
		return
	}
	vctx, cancel := context.WithTimeout(r.ctx, ValidateTimeout)
	err = r.cfg.Exec.Validate(vctx, t.GetAction(), t.GetParams())
	cancel()
	if err != nil && r.ctx.Err() != nil {
		r.failStopping(id, seq)
		return
	}
	if err != nil {
		r.reject(id, seq, t.GetAction(), task.Reject(task.CodeInvalidParams, "invalid parameters for %s: %v", t.GetAction(), err))
		return
	}
	r.execute(t)
}

// failStopping reports an accepted task that was not started because the
// agent is stopping: FAILED, not REJECTED, since nothing is wrong with the
// task and the control plane may try again.
func (r *Runner) failStopping(id string, seq uint64) {
	r.failed.Add(1)
	r.log.Warn("task not started: tend-agent is stopping", "task_id", id, "seq", seq)
	r.report(id, seq, agentv1.TaskState_TASK_STATE_FAILED, stoppedBeforeStart, "", nil)
}

func (r *Runner) execute(t *taskv1.Task) {
	defer r.noteEnd(t.GetPolicy())
	id, seq, action := t.GetTaskId(), t.GetSeq(), t.GetAction()
	timeout := t.GetTimeout().AsDuration()
	log := r.log.With("task_id", id, "seq", seq, "action", action, "policy", t.GetPolicy(), "incident_id", t.GetIncidentId())
	r.report(id, seq, agentv1.TaskState_TASK_STATE_RUNNING, "", "", nil)
	log.Info("task started", "timeout", timeout, "attempt", t.GetAttempt())

	ctx, cancel := context.WithTimeout(r.ctx, timeout+r.cfg.ExecGrace)
	defer cancel()
	start := time.Now()
	r.executed.Add(1)
	failpoint.InjectAsync(failpoint.AgentMidExecution)
	resp, err := r.cfg.Exec.Execute(ctx, action, t.GetParams(), id, timeout)
	took := time.Since(start)
	switch {
	case err != nil:
		reason := fmt.Sprintf("%s failed: %v", action, err)
		switch {
		case r.ctx.Err() != nil:
			reason = fmt.Sprintf("interrupted: tend-agent is stopping (%s ran for %s): %v", action, took.Round(time.Millisecond), err)
		case errors.Is(err, context.DeadlineExceeded) || took >= timeout:
			reason = fmt.Sprintf("%s timed out after %s: %v", action, timeout, err)
		}
		r.failed.Add(1)
		log.Warn("task failed", "reason", reason, "took", took)
		r.report(id, seq, agentv1.TaskState_TASK_STATE_FAILED, reason, resp.GetOutput(), resp.GetMetrics())
	case !resp.GetSuccess():
		r.failed.Add(1)
		log.Warn("task failed: the action reported failure", "took", took)
		r.report(id, seq, agentv1.TaskState_TASK_STATE_FAILED, action+" reported failure", resp.GetOutput(), resp.GetMetrics())
	default:
		r.succeeded.Add(1)
		log.Info("task succeeded", "took", took)
		r.report(id, seq, agentv1.TaskState_TASK_STATE_SUCCEEDED, "", resp.GetOutput(), resp.GetMetrics())
	}
}

// rejectUnopened rejects a delivery whose task could not be trusted (or was
// not even looked at). The task id and seq in the report are read from the
// payload WITHOUT verification, only so the control plane can tell which
// task it was; they decide nothing.
func (r *Runner) rejectUnopened(d *agentv1.TaskDelivery, err error) {
	id, seq := task.UntrustedID(d.GetEnvelope())
	r.reject(id, seq, "", err)
}

// reject reports a refused task: REJECTED, or EXPIRED for a task that came
// after its expiry (nothing is wrong with it, it came too late: the control
// plane may send a new one, where a rejection is final).
func (r *Runner) reject(id string, seq uint64, action string, err error) {
	r.rejected.Add(1)
	code := task.CodeOf(err)
	r.log.Warn("task rejected", "task_id", id, "seq", seq, "action", action, "code", string(code), "reason", err.Error())
	state := agentv1.TaskState_TASK_STATE_REJECTED
	if code == task.CodeExpired {
		state = agentv1.TaskState_TASK_STATE_EXPIRED
	}
	r.report(id, seq, state, err.Error(), "", nil)
}

// report writes a task update to the outbox and wakes the stream.
func (r *Runner) report(id string, seq uint64, s agentv1.TaskState, reason, output string, metrics map[string]float64) {
	u := &agentv1.TaskUpdate{
		TaskId:  id,
		Seq:     seq,
		State:   s,
		Output:  capString(output, MaxOutputBytes),
		At:      timestamppb.New(r.cfg.Now()),
		Reason:  capString(reason, MaxReasonBytes),
		Metrics: capMetrics(metrics),
	}
	if err := r.cfg.DB.PutTaskUpdate(u); err != nil {
		r.log.Error("task update lost: cannot write it to the outbox", "task_id", id, "seq", seq, "state", s.String(), "err", err)
		return
	}
	r.cfg.Notify()
}

// capMetrics keeps at most MaxMetrics metrics (the first by name) with
// short, valid, non-empty names and finite values: an update the control
// plane refuses (api.ValidateTaskUpdate) would be resent forever.
func capMetrics(m map[string]float64) map[string]float64 {
	if len(m) == 0 {
		return nil
	}
	names := make([]string, 0, len(m))
	for k, v := range m {
		if k != "" && len(k) <= MaxMetricNameLen && utf8.ValidString(k) && !math.IsNaN(v) && !math.IsInf(v, 0) {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	out := make(map[string]float64, min(len(names), MaxMetrics))
	for _, k := range names[:min(len(names), MaxMetrics)] {
		out[k] = m[k]
	}
	return out
}

// capString cuts s to at most n bytes on a rune boundary and makes it valid
// UTF-8 (protobuf strings must be).
func capString(s string, n int) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if len(s) <= n {
		return s
	}
	const mark = "… (truncated)"
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}
