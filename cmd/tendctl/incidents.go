package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

// eventObject is one timeline entry.
type eventObject struct {
	At      *time.Time `json:"at"`
	Kind    string     `json:"kind"`
	Message string     `json:"message"`
	Rule    string     `json:"rule,omitempty"`
	TaskID  string     `json:"taskId,omitempty"`
}

// incidentObject is one incident (docs/DESIGN.md "Admin API resources").
type incidentObject struct {
	ID         string        `json:"id"`
	Agent      string        `json:"agent"`
	Policy     string        `json:"policy"`
	State      string        `json:"state"`
	OpenedAt   *time.Time    `json:"openedAt"`
	ResolvedAt *time.Time    `json:"resolvedAt"`
	Attempts   uint32        `json:"attempts"`
	Reason     string        `json:"reason"`
	Timeline   []eventObject `json:"timeline"`
}

// taskObject is one task (docs/DESIGN.md "Admin API resources").
type taskObject struct {
	ID         string          `json:"id"`
	Incident   string          `json:"incident"`
	Agent      string          `json:"agent"`
	Action     string          `json:"action"`
	Params     json.RawMessage `json:"params"`
	State      string          `json:"state"`
	Seq        uint64          `json:"seq"`
	CreatedAt  *time.Time      `json:"createdAt"`
	FinishedAt *time.Time      `json:"finishedAt"`
	Output     string          `json:"output"`
	// Approval, for a policy with requireApproval: who approved and when,
	// and until when a task awaiting approval can be approved.
	ApprovedBy       string     `json:"approvedBy"`
	ApprovedAt       *time.Time `json:"approvedAt"`
	ApprovalDeadline *time.Time `json:"approvalDeadline"`

	reason  string
	attempt uint32
}

// taskAwaitingApproval is the state of a task that waits for `tendctl
// approve task`.
const taskAwaitingApproval = "awaiting_approval"

func toIncidentObject(i *adminv1.Incident) incidentObject {
	o := incidentObject{
		ID: i.GetId(), Agent: i.GetAgent(), Policy: i.GetPolicy(), State: i.GetState(),
		OpenedAt: timePtr(i.GetOpenedAt()), ResolvedAt: timePtr(i.GetResolvedAt()),
		Attempts: i.GetAttempts(), Reason: i.GetReason(), Timeline: []eventObject{},
	}
	for _, e := range i.GetTimeline() {
		o.Timeline = append(o.Timeline, eventObject{At: timePtr(e.GetAt()), Kind: e.GetKind(), Message: e.GetMessage(), Rule: e.GetRule(), TaskID: e.GetTaskId()})
	}
	return o
}

func toTaskObject(t *adminv1.Task) taskObject {
	params := json.RawMessage(t.GetParamsJson())
	if len(params) == 0 {
		params = json.RawMessage("{}")
	}
	return taskObject{
		ID: t.GetId(), Incident: t.GetIncident(), Agent: t.GetAgent(), Action: t.GetAction(), Params: params,
		State: t.GetState(), Seq: t.GetSeq(), CreatedAt: timePtr(t.GetCreatedAt()), FinishedAt: timePtr(t.GetFinishedAt()),
		Output: t.GetOutput(), ApprovedBy: t.GetApprovedBy(), ApprovedAt: timePtr(t.GetApprovedAt()),
		ApprovalDeadline: timePtr(t.GetApprovalDeadline()), reason: t.GetReason(), attempt: t.GetAttempt(),
	}
}

func getIncidents(ctx context.Context, a *app, agent string, openOnly bool, ids []string) ([]incidentObject, error) {
	if len(ids) > 0 {
		var out []incidentObject
		for _, id := range ids {
			resp, err := call(ctx, a, adminv1.AdminServiceClient.GetIncident, &adminv1.GetIncidentRequest{Id: id})
			if err != nil {
				return nil, err
			}
			out = append(out, toIncidentObject(resp.GetIncident()))
		}
		return out, nil
	}
	resp, err := call(ctx, a, adminv1.AdminServiceClient.ListIncidents, &adminv1.ListIncidentsRequest{Agent: agent, OpenOnly: openOnly})
	if err != nil {
		return nil, err
	}
	out := make([]incidentObject, 0, len(resp.GetIncidents()))
	for _, i := range resp.GetIncidents() {
		out = append(out, toIncidentObject(i))
	}
	return out, nil
}

func getTasks(ctx context.Context, a *app, agent, incident string) ([]taskObject, error) {
	resp, err := call(ctx, a, adminv1.AdminServiceClient.ListTasks, &adminv1.ListTasksRequest{Agent: agent, Incident: incident})
	if err != nil {
		return nil, err
	}
	out := make([]taskObject, 0, len(resp.GetTasks()))
	for _, t := range resp.GetTasks() {
		out = append(out, toTaskObject(t))
	}
	return out, nil
}

func incidentTable(w io.Writer, now time.Time, objs []incidentObject) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAGENT\tPOLICY\tSTATE\tOPENED\tATTEMPTS\tREASON")
	for _, o := range objs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", o.ID, o.Agent, o.Policy, o.State, ago(now, o.OpenedAt), o.Attempts, firstLine(o.Reason, 70))
	}
	tw.Flush()
}

func taskTable(w io.Writer, now time.Time, objs []taskObject) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAGENT\tACTION\tSTATE\tSEQ\tCREATED\tAPPROVAL\tINCIDENT\tOUTPUT")
	for _, o := range objs {
		out := o.Output
		if out == "" {
			out = o.reason
		}
		seq := "-" // a task awaiting approval has no sequence number yet
		if o.Seq > 0 {
			seq = fmt.Sprint(o.Seq)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", o.ID, o.Agent, o.Action, o.State, seq, ago(now, o.CreatedAt), approval(now, o), o.Incident, dash(firstLine(out, 60)))
	}
	tw.Flush()
}

// approval is a task's APPROVAL column: how long a task awaiting approval
// may still be approved, or who approved it.
func approval(now time.Time, o taskObject) string {
	switch {
	case o.ApprovedBy != "" && o.State == taskAwaitingApproval:
		// Approved, but the policy's budgets hold it: no deadline any more.
		return "by " + o.ApprovedBy + " " + ago(now, o.ApprovedAt) + ", waiting for budget"
	case o.State == taskAwaitingApproval && o.ApprovalDeadline == nil:
		return "waiting"
	case o.State == taskAwaitingApproval && now.Before(*o.ApprovalDeadline):
		return "waiting, " + humanDuration(o.ApprovalDeadline.Sub(now)) + " left"
	case o.State == taskAwaitingApproval:
		return "waiting, deadline passed " + ago(now, o.ApprovalDeadline)
	case o.ApprovedBy != "":
		return "by " + o.ApprovedBy + " " + ago(now, o.ApprovedAt)
	}
	return "-"
}

// awaitingHint tells, after a task table, which tasks wait for approval
// and how to approve them.
func awaitingHint(w io.Writer, objs []taskObject) {
	var ids []string
	for _, o := range objs {
		if o.State == taskAwaitingApproval {
			ids = append(ids, o.ID)
		}
	}
	switch len(ids) {
	case 0:
	case 1:
		fmt.Fprintf(w, "1 task awaiting approval: tendctl approve task %s\n", ids[0])
	default:
		fmt.Fprintf(w, "%d tasks awaiting approval: tendctl approve task ID (%s)\n", len(ids), strings.Join(ids, ", "))
	}
}

// describeIncident prints the whole story of an incident: what happened,
// what was decided and why, with the time since it opened for every step.
func describeIncident(w io.Writer, now time.Time, resp *adminv1.GetIncidentResponse) error {
	inc := toIncidentObject(resp.GetIncident())
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "Incident:\t%s\n", inc.ID)
	fmt.Fprintf(tw, "Agent:\t%s (%s)\n", inc.Agent, resp.GetIncident().GetAgentId())
	fmt.Fprintf(tw, "Policy:\t%s (version %d)\n", inc.Policy, resp.GetIncident().GetPolicyVersion())
	fmt.Fprintf(tw, "State:\t%s\n", inc.State)
	if inc.OpenedAt != nil {
		fmt.Fprintf(tw, "Opened:\t%s (%s)\n", inc.OpenedAt.Local().Format(time.RFC3339), ago(now, inc.OpenedAt))
	}
	if inc.ResolvedAt != nil && inc.OpenedAt != nil {
		fmt.Fprintf(tw, "Closed:\t%s (after %s)\n", inc.ResolvedAt.Local().Format(time.RFC3339), inc.ResolvedAt.Sub(*inc.OpenedAt).Round(time.Millisecond))
	}
	fmt.Fprintf(tw, "Attempts:\t%d\n", inc.Attempts)
	fmt.Fprintf(tw, "Reason:\t%s\n", inc.Reason)
	tw.Flush()

	fmt.Fprintln(w, "\nTimeline:")
	tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	for _, e := range inc.Timeline {
		rel := ""
		if e.At != nil && inc.OpenedAt != nil {
			rel = "+" + e.At.Sub(*inc.OpenedAt).Round(time.Millisecond).String()
		}
		at := ""
		if e.At != nil {
			at = e.At.Local().Format("15:04:05.000")
		}
		msg := e.Message
		if e.Rule != "" {
			msg = "[" + e.Rule + "] " + msg
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", at, rel, e.Kind, strings.ReplaceAll(msg, "\n", " "))
	}
	tw.Flush()

	if len(resp.GetTasks()) > 0 {
		fmt.Fprintln(w, "\nTasks:")
		objs := make([]taskObject, 0, len(resp.GetTasks()))
		for _, t := range resp.GetTasks() {
			objs = append(objs, toTaskObject(t))
		}
		taskTable(w, now, objs)
	}
	return nil
}
