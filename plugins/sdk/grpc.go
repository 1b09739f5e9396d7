package sdk

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	pluginv1 "tend.dev/tend/proto/tend/plugin/v1"
)

// GRPCPlugin is the go-plugin plugin.GRPCPlugin for ActionService. Impl is
// set in a plugin and nil on the agent's side.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Action
}

// GRPCServer registers the server adapter for Impl.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	if p.Impl == nil {
		return errors.New("sdk: GRPCPlugin.Impl is nil")
	}
	pluginv1.RegisterActionServiceServer(s, &server{impl: p.Impl})
	return nil
}

// GRPCClient returns a *Client on conn.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return NewClient(pluginv1.NewActionServiceClient(conn)), nil
}

// server adapts an Action to pluginv1.ActionServiceServer. It embeds
// UnimplementedActionServiceServer so that an RPC added to the contract
// later is answered Unimplemented by an old plugin.
type server struct {
	pluginv1.UnimplementedActionServiceServer
	impl Action
}

func (s *server) Describe(ctx context.Context, _ *pluginv1.DescribeRequest) (*pluginv1.DescribeResponse, error) {
	resp, err := s.impl.Describe(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return resp, nil
}

func (s *server) Validate(ctx context.Context, req *pluginv1.ValidateRequest) (*pluginv1.ValidateResponse, error) {
	if err := s.impl.Validate(ctx, req.GetAction(), req.GetParams().AsMap()); err != nil {
		return nil, toStatus(err)
	}
	return &pluginv1.ValidateResponse{}, nil
}

func (s *server) Execute(ctx context.Context, req *pluginv1.ExecuteRequest) (*pluginv1.ExecuteResponse, error) {
	var timeout time.Duration
	if req.GetTimeout() != nil {
		if err := req.GetTimeout().CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "invalid timeout: %v", err)
		}
		timeout = req.GetTimeout().AsDuration()
		if timeout < 0 {
			return nil, status.Errorf(codes.InvalidArgument, "invalid timeout %s: must not be negative", timeout)
		}
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	res, err := s.impl.Execute(ctx, ExecuteRequest{
		TaskID:  req.GetTaskId(),
		Action:  req.GetAction(),
		Params:  req.GetParams().AsMap(),
		Timeout: timeout,
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return CleanResponse(&pluginv1.ExecuteResponse{Success: res.Success, Output: res.Output, Metrics: res.Metrics}), nil
}

// toStatus maps a plugin's error to a gRPC status: ErrInvalidParams to
// InvalidArgument, ErrUnknownAction to NotFound, context errors to
// DeadlineExceeded and Canceled, a status error to itself, anything else to
// Unknown. It never produces Unavailable, which the agent reads as a crash.
func toStatus(err error) error {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		st, _ := status.FromError(err)
		if st.Code() == codes.Unavailable {
			return status.Error(codes.Unknown, CapOutput(st.Message()))
		}
		return status.Error(st.Code(), CapOutput(st.Message()))
	}
	code := codes.Unknown
	switch {
	case errors.Is(err, ErrInvalidParams):
		code = codes.InvalidArgument
	case errors.Is(err, ErrUnknownAction):
		code = codes.NotFound
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	}
	return status.Error(code, CapOutput(err.Error()))
}

// remoteError is a plugin's error as the agent sees it: the plugin's
// message, and the sdk error it stands for.
type remoteError struct {
	kind error
	msg  string
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

// FromStatus maps an error from an ActionService call back to the sdk's
// errors: InvalidArgument to an error wrapping ErrInvalidParams,
// NotFound to one wrapping ErrUnknownAction, both with the plugin's
// message. Other errors are returned as they are, so that callers can
// still read their gRPC code (Unavailable: the plugin is gone).
func FromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.InvalidArgument:
		return &remoteError{kind: ErrInvalidParams, msg: st.Message()}
	case codes.NotFound:
		return &remoteError{kind: ErrUnknownAction, msg: st.Message()}
	}
	return err
}

// Client is the agent's side of a plugin: it implements Action over
// gRPC, and RPC gives the generated client for callers that hold protobuf
// types already.
type Client struct {
	rpc pluginv1.ActionServiceClient
}

var _ Action = (*Client)(nil)

// NewClient wraps a generated ActionService client.
func NewClient(rpc pluginv1.ActionServiceClient) *Client { return &Client{rpc: rpc} }

// RPC returns the generated client. Map its errors with FromStatus.
func (c *Client) RPC() pluginv1.ActionServiceClient { return c.rpc }

// Describe asks the plugin for its name, version and actions.
func (c *Client) Describe(ctx context.Context) (*pluginv1.DescribeResponse, error) {
	resp, err := c.rpc.Describe(ctx, &pluginv1.DescribeRequest{})
	return resp, FromStatus(err)
}

// Validate asks the plugin to check an action's parameters.
func (c *Client) Validate(ctx context.Context, action string, params map[string]any) error {
	st, err := structpb.NewStruct(params)
	if err != nil {
		return fmt.Errorf("%w: cannot encode params: %v", ErrInvalidParams, err)
	}
	_, err = c.rpc.Validate(ctx, &pluginv1.ValidateRequest{Action: action, Params: st})
	return FromStatus(err)
}

// Execute runs an action in the plugin.
func (c *Client) Execute(ctx context.Context, req ExecuteRequest) (ExecuteResult, error) {
	st, err := structpb.NewStruct(req.Params)
	if err != nil {
		return ExecuteResult{}, fmt.Errorf("%w: cannot encode params: %v", ErrInvalidParams, err)
	}
	pb := &pluginv1.ExecuteRequest{TaskId: req.TaskID, Action: req.Action, Params: st}
	if req.Timeout > 0 {
		pb.Timeout = durationpb.New(req.Timeout)
	}
	resp, err := c.rpc.Execute(ctx, pb)
	if err != nil {
		return ExecuteResult{}, FromStatus(err)
	}
	resp = CleanResponse(resp)
	return ExecuteResult{Success: resp.GetSuccess(), Output: resp.GetOutput(), Metrics: resp.GetMetrics()}, nil
}
