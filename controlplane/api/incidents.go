package api

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/controlplane/store"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

// tsOrNil leaves unset times unset instead of showing 1970.
func tsOrNil(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func (h *Admin) agentName(id string) string {
	if a, ok := h.Fleet.Get(id); ok {
		return a.Name
	}
	return id
}

func (h *Admin) incidentProto(inc store.Incident) *adminv1.Incident {
	out := &adminv1.Incident{
		Id:            inc.ID,
		Agent:         h.agentName(inc.AgentID),
		AgentId:       inc.AgentID,
		Policy:        inc.Policy,
		PolicyVersion: inc.PolicyVersion,
		State:         inc.State,
		OpenedAt:      timestamppb.New(inc.OpenedAt),
		ResolvedAt:    tsOrNil(inc.ResolvedAt),
		Attempts:      uint32(inc.Attempts),
		Reason:        inc.Reason,
	}
	for _, e := range inc.Timeline {
		out.Timeline = append(out.Timeline, &adminv1.Event{At: timestamppb.New(e.At), Kind: e.Kind, Message: e.Message, Rule: e.Rule, TaskId: e.TaskID})
	}
	return out
}

func (h *Admin) taskProto(t store.Task) *adminv1.Task {
	return &adminv1.Task{
		Id:         t.ID,
		Incident:   t.IncidentID,
		Agent:      h.agentName(t.AgentID),
		AgentId:    t.AgentID,
		Action:     t.Action,
		ParamsJson: t.Params,
		State:      t.State,
		Seq:        t.Seq,
		CreatedAt:  timestamppb.New(t.CreatedAt),
		FinishedAt: tsOrNil(t.FinishedAt),
		Output:     t.Output,
		Reason:     t.Reason,
		Attempt:    uint32(t.Attempt),
		ExpiresAt:  tsOrNil(t.ExpiresAt),
		Policy:     t.Policy,
		ApprovedBy: t.ApprovedBy,
		ApprovedAt: tsOrNil(t.ApprovedAt),

		ApprovalDeadline: tsOrNil(t.ApprovalDeadline),
	}
}

// ListIncidents returns incidents, newest first.
func (h *Admin) ListIncidents(ctx context.Context, req *adminv1.ListIncidentsRequest) (*adminv1.ListIncidentsResponse, error) {
	f := store.IncidentFilter{OpenOnly: req.GetOpenOnly(), Policy: req.GetPolicy()}
	if req.GetAgent() != "" {
		a, err := h.resolveAgent(req.GetAgent())
		if err != nil {
			return nil, toStatus(err)
		}
		f.AgentID = a.ID
	}
	incs, err := h.Store.ListIncidents(f)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &adminv1.ListIncidentsResponse{}
	for _, inc := range incs {
		resp.Incidents = append(resp.Incidents, h.incidentProto(inc))
	}
	return resp, nil
}

// GetIncident returns one incident with its timeline and tasks.
func (h *Admin) GetIncident(ctx context.Context, req *adminv1.GetIncidentRequest) (*adminv1.GetIncidentResponse, error) {
	if req.GetId() == "" {
		return nil, status.Error(codes.InvalidArgument, "id: required (see 'tendctl get incidents')")
	}
	inc, err := h.Store.GetIncident(req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	tasks, err := h.Store.ListTasks(store.TaskFilter{IncidentID: inc.ID})
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &adminv1.GetIncidentResponse{Incident: h.incidentProto(inc)}
	for _, t := range tasks {
		resp.Tasks = append(resp.Tasks, h.taskProto(t))
	}
	return resp, nil
}

// ListTasks returns tasks, newest first.
func (h *Admin) ListTasks(ctx context.Context, req *adminv1.ListTasksRequest) (*adminv1.ListTasksResponse, error) {
	f := store.TaskFilter{IncidentID: req.GetIncident()}
	if req.GetAgent() != "" {
		a, err := h.resolveAgent(req.GetAgent())
		if err != nil {
			return nil, toStatus(err)
		}
		f.AgentID = a.ID
	}
	tasks, err := h.Store.ListTasks(f)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &adminv1.ListTasksResponse{}
	for _, t := range tasks {
		resp.Tasks = append(resp.Tasks, h.taskProto(t))
	}
	return resp, nil
}
