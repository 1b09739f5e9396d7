package server

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

// A message over the receive limit is refused with ResourceExhausted
// before it is decoded, and the control plane goes on serving; so is a
// response over the send limit.
func TestMessageSizeLimits(t *testing.T) {
	_, admin := testServer(t, t.TempDir())
	ctx := context.Background()

	_, err := admin.ApplyPolicies(ctx, &adminv1.ApplyPoliciesRequest{Filename: "huge.yaml", Content: bytes.Repeat([]byte("#"), DefaultMaxRecvMsgSize+1)})
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
	_, err = admin.ListPolicies(ctx, &adminv1.ListPoliciesRequest{})
	require.NoError(t, err, "still serving")

	// A small send limit: a listing that outgrows it is refused, whole.
	_, admin = testServer(t, t.TempDir(), func(c *Config) { c.MaxSendMsgSize = 2 << 10 })
	var docs []string
	for i := range 20 {
		docs = append(docs, fmt.Sprintf(`apiVersion: tend.dev/v1
kind: Policy
metadata: {name: p-%d}
spec:
  selector: {matchLabels: {role: web}}
  check: {type: tcp, tcp: {address: "127.0.0.1:%d"}}
`, i, 1000+i))
	}
	_, err = admin.ApplyPolicies(ctx, &adminv1.ApplyPoliciesRequest{Filename: "p.yaml", Content: []byte(strings.Join(docs, "---\n"))})
	require.NoError(t, err)
	_, err = admin.ListPolicies(ctx, &adminv1.ListPoliciesRequest{})
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
	_, err = admin.GetPolicy(ctx, &adminv1.GetPolicyRequest{Name: "p-1"})
	require.NoError(t, err, "a small response still goes")
}
