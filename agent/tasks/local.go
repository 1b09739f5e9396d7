package tasks

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Busy reports whether a task from the control plane is being checked or
// run now.
func (r *Runner) Busy() bool { return r.busy.Load() }

// LastTaskEnd is when the last control-plane task of the policy ended on
// this agent (zero if none since start).
func (r *Runner) LastTaskEnd(policy string) time.Time {
	r.endsMu.Lock()
	defer r.endsMu.Unlock()
	return r.ends[policy]
}

func (r *Runner) noteEnd(policy string) {
	r.endsMu.Lock()
	defer r.endsMu.Unlock()
	if r.ends == nil {
		r.ends = map[string]time.Time{}
	}
	r.ends[policy] = r.cfg.Now()
}

// LocalResult is the outcome of an action the agent ran on its own (under a
// standing order).
type LocalResult struct {
	State  agentv1.TaskState // SUCCEEDED, FAILED or REJECTED
	Reason string
	Output string
}

// RunLocal runs an action the agent decided on itself, under a standing
// order already verified by the caller: the same allow-list and parameter
// validation as a task from the control plane, then the plugin, with the
// timeout. It blocks until the action ends (or ctx or the runner stops).
func (r *Runner) RunLocal(ctx context.Context, runID, action string, params *structpb.Struct, timeout time.Duration) LocalResult {
	r.execMu.Lock() // never at the same time as a task from the control plane
	defer r.execMu.Unlock()
	if err := r.cfg.Allow.Check(action, params); err != nil {
		return LocalResult{State: agentv1.TaskState_TASK_STATE_REJECTED, Reason: capString(err.Error(), MaxReasonBytes)}
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		select {
		case <-r.ctx.Done():
			stop()
		case <-ctx.Done():
		}
	}()
	vctx, cancel := context.WithTimeout(ctx, ValidateTimeout)
	err := r.cfg.Exec.Validate(vctx, action, params)
	cancel()
	if err != nil {
		return LocalResult{State: agentv1.TaskState_TASK_STATE_REJECTED, Reason: capString(fmt.Sprintf("invalid parameters for %s: %v", action, err), MaxReasonBytes)}
	}
	ectx, cancel := context.WithTimeout(ctx, timeout+r.cfg.ExecGrace)
	defer cancel()
	start := time.Now()
	r.executed.Add(1)
	resp, err := r.cfg.Exec.Execute(ectx, action, params, runID, timeout)
	took := time.Since(start)
	out := capString(resp.GetOutput(), MaxOutputBytes)
	switch {
	case err != nil:
		reason := fmt.Sprintf("%s failed: %v", action, err)
		if errors.Is(err, context.DeadlineExceeded) || took >= timeout {
			reason = fmt.Sprintf("%s timed out after %s: %v", action, timeout, err)
		}
		r.failed.Add(1)
		return LocalResult{State: agentv1.TaskState_TASK_STATE_FAILED, Reason: capString(reason, MaxReasonBytes), Output: out}
	case !resp.GetSuccess():
		r.failed.Add(1)
		return LocalResult{State: agentv1.TaskState_TASK_STATE_FAILED, Reason: action + " reported failure", Output: out}
	}
	r.succeeded.Add(1)
	return LocalResult{State: agentv1.TaskState_TASK_STATE_SUCCEEDED, Output: out}
}
