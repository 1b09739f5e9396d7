package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/controlplane/api"
	"tend.dev/tend/internal/adminconf"
	"tend.dev/tend/internal/pki"
	"tend.dev/tend/internal/policy"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// cliResult is what one tendctl run printed and returned.
type cliResult struct {
	stdout, stderr string
	code           int
}

// runCLI runs tendctl in-process with the given environment and stdin.
func runCLI(t *testing.T, env map[string]string, stdin string, args ...string) cliResult {
	t.Helper()
	var out, errb bytes.Buffer
	getenv := func(k string) string { return env[k] }
	code := run(context.Background(), args, strings.NewReader(stdin), &out, &errb, getenv)
	return cliResult{stdout: out.String(), stderr: errb.String(), code: code}
}

// testPKI is a throwaway CA with a server certificate for 127.0.0.1 and an
// admin client certificate.
type testPKI struct {
	caPEM           string
	server          tls.Certificate
	clientCert, key string
	pool            *x509.CertPool
	ca              *pki.CA // signs the CSRs of IssueCredential
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tendctl test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)

	issue := func(serial int64, cn string, usage x509.ExtKeyUsage, ips []net.IP) (certPEM, keyPEM []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn, OrganizationalUnit: []string{"admin"}},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			IPAddresses:  ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		require.NoError(t, err)
		kder, err := x509.MarshalECPrivateKey(key)
		require.NoError(t, err)
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	}
	sc, sk := issue(2, "tend-controlplane", x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	server, err := tls.X509KeyPair(sc, sk)
	require.NoError(t, err)
	cc, ck := issue(3, "admin", x509.ExtKeyUsageClientAuth, nil)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &testPKI{
		caPEM:      string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})),
		server:     server,
		clientCert: string(cc),
		key:        string(ck),
		pool:       pool,
		ca:         &pki.CA{Cert: caCert, CertPEM: []byte(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})), Key: caKey},
	}
}

// writeConf writes an admin.conf for server addr and returns its path.
func (p *testPKI) writeConf(t *testing.T, addr string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "admin.conf")
	require.NoError(t, adminconf.Save(path, &adminconf.Config{Server: addr, CA: p.caPEM, Cert: p.clientCert, Key: p.key}))
	return path
}

// fakeAdmin is an in-memory AdminService: enough behaviour to drive every
// tendctl command.
type fakeAdmin struct {
	adminv1.UnimplementedAdminServiceServer

	mu        sync.Mutex
	agents    []*adminv1.Agent
	policies  map[string]*adminv1.Policy
	checks    []*adminv1.CheckState
	results   map[string][]*agentv1.CheckResult // "agent/check"
	applied   []*adminv1.ApplyPoliciesRequest
	tokenReqs []*adminv1.CreateTokenRequest
	deleted   []string
	applyErr  map[string]error // by file name

	tasks      []*adminv1.Task
	approved   []*adminv1.ApproveTaskRequest
	status     map[string]*adminv1.PolicyStatus // by policy
	rearmed    []*adminv1.RearmPolicyRequest
	ca         *pki.CA
	creds      []*adminv1.Credential
	issued     []*adminv1.IssueCredentialRequest
	keys       []*adminv1.SigningKeyInfo
	keyHolders uint32 // agents holding a newly rotated key
}

// startFake serves a fakeAdmin over mTLS on 127.0.0.1:0 and returns it with
// the path of an admin.conf for it.
func startFake(t *testing.T) (*fakeAdmin, string) {
	t.Helper()
	pki := newTestPKI(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	f := &fakeAdmin{policies: map[string]*adminv1.Policy{}, results: map[string][]*agentv1.CheckResult{},
		status: map[string]*adminv1.PolicyStatus{}, ca: pki.ca}
	// The control plane's own access policy: roles from the certificate's
	// OU, revoked credentials refused.
	auth := &api.Authorizer{CredentialAllowed: f.credentialAllowed}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{pki.server},
		ClientCAs:    pki.pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	})), grpc.UnaryInterceptor(auth.Unary))
	adminv1.RegisterAdminServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return f, pki.writeConf(t, lis.Addr().String())
}

func (f *fakeAdmin) ListAgents(context.Context, *adminv1.ListAgentsRequest) (*adminv1.ListAgentsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &adminv1.ListAgentsResponse{Agents: f.agents}, nil
}

func (f *fakeAdmin) DeleteAgent(_ context.Context, req *adminv1.DeleteAgentRequest) (*adminv1.DeleteAgentResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range f.agents {
		if a.GetName() == req.GetName() || a.GetId() == req.GetName() {
			f.deleted = append(f.deleted, "agent/"+a.GetName())
			return &adminv1.DeleteAgentResponse{Agent: a}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "agent %q not found", req.GetName())
}

func (f *fakeAdmin) ApplyPolicies(_ context.Context, req *adminv1.ApplyPoliciesRequest) (*adminv1.ApplyPoliciesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = append(f.applied, req)
	if err := f.applyErr[req.GetFilename()]; err != nil {
		return nil, err
	}
	ps, err := policy.Parse(req.GetFilename(), req.GetContent())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	resp := &adminv1.ApplyPoliciesResponse{}
	for _, p := range ps {
		spec, err := p.SpecJSON()
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		old, ok := f.policies[p.Name()]
		action, version := "created", uint64(1)
		switch {
		case ok && bytes.Equal(old.GetSpecJson(), spec):
			action, version = "unchanged", old.GetVersion()
		case ok:
			action, version = "configured", old.GetVersion()+1
		}
		if !req.GetDryRun() {
			f.policies[p.Name()] = &adminv1.Policy{Name: p.Name(), Version: version, SpecJson: spec, UpdatedAt: timestamppb.Now()}
		}
		resp.Changes = append(resp.Changes, &adminv1.PolicyChange{Name: p.Name(), Version: version, Action: action})
	}
	return resp, nil
}

func (f *fakeAdmin) ListPolicies(context.Context, *adminv1.ListPoliciesRequest) (*adminv1.ListPoliciesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &adminv1.ListPoliciesResponse{}
	for _, p := range f.policies {
		resp.Policies = append(resp.Policies, p)
	}
	return resp, nil
}

func (f *fakeAdmin) GetPolicy(_ context.Context, req *adminv1.GetPolicyRequest) (*adminv1.GetPolicyResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.policies[req.GetName()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "policy %q not found", req.GetName())
	}
	pol, err := policy.FromSpecJSON(p.GetName(), p.GetVersion(), p.GetSpecJson())
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	resp := &adminv1.GetPolicyResponse{Policy: p, Status: f.status[req.GetName()]}
	for _, a := range f.agents {
		if pol.Matches(a.GetLabels()) {
			resp.MatchedAgents = append(resp.MatchedAgents, a.GetName())
		}
	}
	sort.Strings(resp.MatchedAgents)
	return resp, nil
}

func (f *fakeAdmin) DeletePolicy(_ context.Context, req *adminv1.DeletePolicyRequest) (*adminv1.DeletePolicyResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.policies[req.GetName()]; !ok {
		return nil, status.Errorf(codes.NotFound, "policy %q not found", req.GetName())
	}
	delete(f.policies, req.GetName())
	f.deleted = append(f.deleted, "policy/"+req.GetName())
	return &adminv1.DeletePolicyResponse{}, nil
}

func (f *fakeAdmin) ListChecks(_ context.Context, req *adminv1.ListChecksRequest) (*adminv1.ListChecksResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &adminv1.ListChecksResponse{}
	for _, c := range f.checks {
		if req.GetAgent() == "" || req.GetAgent() == c.GetAgentName() || req.GetAgent() == c.GetAgentId() {
			resp.Checks = append(resp.Checks, c)
		}
	}
	return resp, nil
}

func (f *fakeAdmin) ListResults(_ context.Context, req *adminv1.ListResultsRequest) (*adminv1.ListResultsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rs, ok := f.results[req.GetAgent()+"/"+req.GetCheckId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no results for check %q on agent %q", req.GetCheckId(), req.GetAgent())
	}
	if n := int(req.GetLimit()); n > 0 && n < len(rs) {
		rs = rs[len(rs)-n:]
	}
	return &adminv1.ListResultsResponse{Results: rs}, nil
}

func (f *fakeAdmin) CreateToken(_ context.Context, req *adminv1.CreateTokenRequest) (*adminv1.CreateTokenResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokenReqs = append(f.tokenReqs, req)
	n := len(f.tokenReqs)
	return &adminv1.CreateTokenResponse{
		Token:     fmt.Sprintf("tok%03d.secret.pin", n),
		Id:        fmt.Sprintf("tok%03d", n),
		ExpiresAt: timestamppb.New(time.Now().Add(req.GetTtl().AsDuration())),
		Uses:      req.GetUses(),
		CaPin:     "sha256:abcd",
	}, nil
}

func (f *fakeAdmin) credentialAllowed(id pki.Identity) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.creds {
		if c.GetSerial() == id.Serial && c.GetRevoked() {
			return fmt.Errorf("credential %s (serial %s) was revoked", id.ID, id.Serial)
		}
	}
	return nil
}

// caller is "name (role)", as the control plane records who did what.
func caller(ctx context.Context) string {
	if id, ok := api.IdentityFrom(ctx); ok {
		return id.ID + " (" + id.Role + ")"
	}
	return "unknown"
}

func (f *fakeAdmin) ListTasks(_ context.Context, req *adminv1.ListTasksRequest) (*adminv1.ListTasksResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &adminv1.ListTasksResponse{}
	for _, t := range f.tasks {
		if (req.GetAgent() == "" || req.GetAgent() == t.GetAgent()) && (req.GetIncident() == "" || req.GetIncident() == t.GetIncident()) {
			resp.Tasks = append(resp.Tasks, t)
		}
	}
	return resp, nil
}

func (f *fakeAdmin) ApproveTask(ctx context.Context, req *adminv1.ApproveTaskRequest) (*adminv1.ApproveTaskResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.approved = append(f.approved, req)
	for _, t := range f.tasks {
		if t.GetId() != req.GetId() {
			continue
		}
		if t.GetState() != "awaiting_approval" {
			return nil, status.Errorf(codes.FailedPrecondition, "task %s is %s: only a task awaiting approval can be approved: not in the state the operation needs", t.GetId(), t.GetState())
		}
		t.ApprovedBy, t.ApprovedAt, t.ApprovalDeadline = caller(ctx), timestamppb.Now(), nil
		t.State, t.Seq = "pending", 7
		return &adminv1.ApproveTaskResponse{Task: t}, nil
	}
	return nil, status.Errorf(codes.NotFound, "task %q: not found", req.GetId())
}

func (f *fakeAdmin) RearmPolicy(_ context.Context, req *adminv1.RearmPolicyRequest) (*adminv1.RearmPolicyResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rearmed = append(f.rearmed, req)
	if _, ok := f.policies[req.GetName()]; !ok {
		return nil, status.Errorf(codes.NotFound, "policy %q: not found", req.GetName())
	}
	old := f.status[req.GetName()]
	st := &adminv1.PolicyStatus{Running: old.GetRunning(), StartedLastHour: old.GetStartedLastHour()}
	f.status[req.GetName()] = st
	return &adminv1.RearmPolicyResponse{Status: st}, nil
}

func (f *fakeAdmin) IssueCredential(ctx context.Context, req *adminv1.IssueCredentialRequest) (*adminv1.IssueCredentialResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.issued = append(f.issued, req)
	if !slices.Contains(pki.OperatorRoles, req.GetRole()) {
		return nil, status.Errorf(codes.InvalidArgument, "role: want one of viewer, operator, admin, got %q", req.GetRole())
	}
	der, err := f.ca.SignCSR(req.GetCsrDer(), req.GetName(), req.GetRole(), req.GetTtl().AsDuration())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr_der: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	c := &adminv1.Credential{Name: req.GetName(), Role: req.GetRole(), Serial: cert.SerialNumber.Text(16),
		IssuedAt: timestamppb.Now(), ExpiresAt: timestamppb.New(cert.NotAfter), IssuedBy: caller(ctx)}
	f.creds = append(f.creds, c)
	return &adminv1.IssueCredentialResponse{Credential: c, CertificatePem: pki.EncodeCertPEM(der), CaPem: f.ca.CertPEM}, nil
}

func (f *fakeAdmin) ListCredentials(context.Context, *adminv1.ListCredentialsRequest) (*adminv1.ListCredentialsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &adminv1.ListCredentialsResponse{Credentials: f.creds}, nil
}

func (f *fakeAdmin) RevokeCredential(_ context.Context, req *adminv1.RevokeCredentialRequest) (*adminv1.RevokeCredentialResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &adminv1.RevokeCredentialResponse{}
	for _, c := range f.creds {
		if c.GetName() == req.GetName() || c.GetSerial() == req.GetName() {
			c.Revoked = true
			resp.Revoked = append(resp.Revoked, c)
		}
	}
	if len(resp.Revoked) == 0 {
		return nil, status.Errorf(codes.NotFound, "no credential named or with serial %q (see tendctl get credentials)", req.GetName())
	}
	return resp, nil
}

func (f *fakeAdmin) ListSigningKeys(context.Context, *adminv1.ListSigningKeysRequest) (*adminv1.ListSigningKeysResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &adminv1.ListSigningKeysResponse{Keys: f.keys}, nil
}

func (f *fakeAdmin) key(id string) (*adminv1.SigningKeyInfo, error) {
	for _, k := range f.keys {
		if k.GetKeyId() == id {
			return k, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "signing key %q: no such signing key", id)
}

func (f *fakeAdmin) RotateSigningKey(context.Context, *adminv1.RotateSigningKeyRequest) (*adminv1.RotateSigningKeyResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	total := uint32(0)
	if len(f.keys) > 0 {
		total = f.keys[0].GetAgentsTotal()
	}
	k := &adminv1.SigningKeyInfo{KeyId: fmt.Sprintf("%016x", len(f.keys)+0xb0), State: "published", CreatedAt: timestamppb.Now(), AgentsHolding: f.keyHolders, AgentsTotal: total}
	f.keys = append(f.keys, k)
	return &adminv1.RotateSigningKeyResponse{Key: k}, nil
}

func (f *fakeAdmin) ActivateSigningKey(_ context.Context, req *adminv1.ActivateSigningKeyRequest) (*adminv1.ActivateSigningKeyResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := f.key(req.GetKeyId())
	if err != nil {
		return nil, err
	}
	if missing := k.GetAgentsTotal() - k.GetAgentsHolding(); missing > 0 && !req.GetForce() {
		return nil, status.Errorf(codes.FailedPrecondition, "signing key %s: %d agents have not reported holding it yet (their tasks would be rejected); wait until `tendctl get keys` shows every agent, or use --force: signing key in the wrong state", k.GetKeyId(), missing)
	}
	for _, o := range f.keys {
		if o.GetState() == "active" {
			o.State = "published"
		}
	}
	k.State = "active"
	return &adminv1.ActivateSigningKeyResponse{Key: k}, nil
}

func (f *fakeAdmin) RetireSigningKey(_ context.Context, req *adminv1.RetireSigningKeyRequest) (*adminv1.RetireSigningKeyResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := f.key(req.GetKeyId())
	if err != nil {
		return nil, err
	}
	if k.GetState() == "active" {
		return nil, status.Errorf(codes.FailedPrecondition, "signing key %s is the active key: activate another one first: signing key in the wrong state", k.GetKeyId())
	}
	k.State = "retired"
	return &adminv1.RetireSigningKeyResponse{Key: k}, nil
}
