// Package server wires the control plane together: PKI, store, fleet
// registry, ingest, gRPC services and the HTTP endpoint (/metrics, /healthz).
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"tend.dev/tend/controlplane/api"
	"tend.dev/tend/controlplane/dispatch"
	"tend.dev/tend/controlplane/fleet"
	"tend.dev/tend/controlplane/ingest"
	"tend.dev/tend/controlplane/keys"
	"tend.dev/tend/controlplane/remediation"
	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/controlplane/store/bolt"
	"tend.dev/tend/internal/adminconf"
	"tend.dev/tend/internal/pki"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Config is the control plane's configuration (flags of tend-controlplane).
type Config struct {
	DataDir    string
	Listen     string // gRPC: agents and admin API
	HTTPListen string // /metrics, /healthz ("" disables)
	// TLSSANs are extra names/IPs for the serving certificate.
	TLSSANs         []string
	AgentCertTTL    time.Duration
	HeartbeatMinTTL time.Duration
	HeartbeatGrace  time.Duration
	HistoryPerCheck int
	// FleetMaxConcurrent and FleetMaxPerHour bound remediation tasks across
	// all policies (0: no limit).
	FleetMaxConcurrent int
	FleetMaxPerHour    int
	// MaxRecvMsgSize caps one gRPC message received (default
	// DefaultMaxRecvMsgSize).
	MaxRecvMsgSize int
	// MaxSendMsgSize caps one gRPC message sent (default
	// DefaultMaxSendMsgSize).
	MaxSendMsgSize int
	Log            *slog.Logger
	// OnLatency, if set, also receives the remediation latencies that go
	// to the tend_remediation_latency_seconds histogram (benchmarks).
	OnLatency func(step string, d time.Duration)
	// HandlerProbe, if set, is called with the full method name of every
	// RPC that passed authorization, just before its handler runs: an
	// interceptor chained after the auth interceptor (tests: the auth
	// matrix counts that denied calls never reach a handler). Leave nil in
	// production.
	HandlerProbe func(method string)
}

// Defaults.
const (
	DefaultAgentCertTTL = 24 * time.Hour
	AdminCertTTL        = 365 * 24 * time.Hour
	ServerCertTTL       = 365 * 24 * time.Hour
	StoreFile           = "tend.db"
	AdminConfFile       = "admin.conf"

	// DefaultMaxRecvMsgSize: the largest message a legitimate client
	// sends is an agent's result batch, at most 1 MiB of results
	// (agent/stream.DefaultBatchMaxBytes; results carry at most 4 KiB of
	// output and 64 metrics) plus one result, or a policy file of at most
	// 1 MiB (api.MaxPolicyFile). 4 MiB leaves room and refuses anything
	// bigger before it is decoded.
	DefaultMaxRecvMsgSize = 4 << 20
	// DefaultMaxSendMsgSize: the largest messages sent are an agent's
	// check assignment (one spec per matching policy), a task envelope
	// (params from a policy file of at most 1 MiB) and admin listings.
	// Agents accept as much (agent/stream.MaxRecvMsgSize).
	DefaultMaxSendMsgSize = 16 << 20
)

// Server is a running control plane.
type Server struct {
	cfg      Config
	log      *slog.Logger
	ca       *pki.CA
	keys     *keys.Ring
	store    store.Store
	fleet    *fleet.Registry
	ingest   *ingest.Committer
	policies *PolicySetHandle
	remed    *remediation.Manager
	webhook  *dispatch.Webhook
	grpc     *grpc.Server
	http     *http.Server
	lis      net.Listener
	httpLis  net.Listener
	reg      *prometheus.Registry
	tickets  *ticketKeys
	creds    *limitedCreds
	wg       sync.WaitGroup
}

// PolicySetHandle is exported for tests.
type PolicySetHandle = api.PolicySet

// New prepares the control plane: creates the data dir, CA, signing key and
// admin.conf on first start, opens the store and binds the listeners.
func New(cfg Config) (*Server, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.AgentCertTTL <= 0 {
		cfg.AgentCertTTL = DefaultAgentCertTTL
	}
	if cfg.MaxRecvMsgSize <= 0 {
		cfg.MaxRecvMsgSize = DefaultMaxRecvMsgSize
	}
	if cfg.MaxSendMsgSize <= 0 {
		cfg.MaxSendMsgSize = DefaultMaxSendMsgSize
	}
	log := cfg.Log
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir %s: %w", cfg.DataDir, err)
	}
	ca, created, err := pki.LoadOrCreateCA(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if created {
		log.Info("created CA", "dir", cfg.DataDir, "pin", ca.Pin())
	}
	ring, err := keys.Open(cfg.DataDir, nil)
	if err != nil {
		return nil, err
	}
	log.Info("task-signing key", "active", ring.Active().ID, "published", len(ring.Published()))

	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	s := &Server{cfg: cfg, log: log, ca: ca, keys: ring, lis: lis, reg: prometheus.NewRegistry()}
	cleanup := func() { lis.Close() }
	if err := s.writeAdminConf(); err != nil {
		cleanup()
		return nil, err
	}

	st, err := bolt.Open(filepath.Join(cfg.DataDir, StoreFile), bolt.Options{HistoryPerCheck: cfg.HistoryPerCheck})
	if err != nil {
		cleanup()
		return nil, err
	}
	s.store = st
	cleanup = func() { lis.Close(); st.Close() }

	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	streams := prometheus.NewGauge(prometheus.GaugeOpts{Name: "tend_agent_streams", Help: "Open agent streams."})
	s.reg.MustRegister(streams)

	s.fleet, err = fleet.New(fleet.Config{
		Store:  st,
		MinTTL: cfg.HeartbeatMinTTL,
		Grace:  cfg.HeartbeatGrace,
		Log:    log.With("component", "fleet"),
	})
	if err != nil {
		cleanup()
		return nil, err
	}
	s.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tend_heartbeat_ttl_seconds", Help: "Current heartbeat TTL."},
		func() float64 { return s.fleet.TTL().Seconds() }))
	s.reg.MustRegister(&fleetCollector{f: s.fleet, desc: prometheus.NewDesc("tend_fleet_agents", "Agents by status.", []string{"status"}, nil)})

	s.ingest = ingest.New(st, ingest.Options{Registerer: s.reg}, log.With("component", "ingest"))
	s.policies, err = api.NewPolicySet(st, log.With("component", "policies"))
	if err != nil {
		s.fleet.Stop()
		cleanup()
		return nil, err
	}

	s.webhook = dispatch.NewWebhook(log.With("component", "webhook"))
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "tend_remediation_latency_seconds",
		Help:    "Latency of remediation steps (trigger_to_task_running: from the result that completed a trigger reaching the control plane to the agent reporting the task running).",
		Buckets: []float64{.005, .01, .02, .05, .1, .2, .5, 1, 2, 5},
	}, []string{"step"})
	s.reg.MustRegister(latency)
	s.remed = remediation.New(remediation.Config{
		Store: st, Fleet: s.fleet, Policies: s.policies, Signer: ring.Active, Webhook: s.webhook,
		FleetMaxConcurrent: cfg.FleetMaxConcurrent, FleetMaxPerHour: cfg.FleetMaxPerHour,
		OrderKeys: ring.AllPublic,
		// A policy whose breaker opens or that a correlated hold stops
		// loses its standing orders at once (and gets them back after).
		OnHoldChange: func(string) { s.policies.PushOrders(s.fleet, ring.Active, time.Now()) },
		Log:          log.With("component", "remediation"),
		Observe: func(step string, d time.Duration) {
			latency.WithLabelValues(step).Observe(d.Seconds())
			log.Debug("remediation latency", "step", step, "latency", d)
			if cfg.OnLatency != nil {
				cfg.OnLatency(step, d)
			}
		},
	})

	s.policies.Held = s.remed.Held
	serverCert, err := ca.IssueServerCert(s.serverNames(), ServerCertTTL)
	if err != nil {
		cleanup()
		return nil, err
	}
	tlsConf := &tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    ca.Pool(),
		MinVersion:   tls.VersionTLS13,
		// gRPC adds h2 to the config it is given, not to the one
		// GetConfigForClient returns.
		NextProtos: []string{"h2"},
	}
	// Session tickets with keys kept in the data dir, so that agents
	// resume their TLS sessions after a restart (tickets.go).
	s.tickets, err = openTicketKeys(cfg.DataDir, tlsConf, time.Now())
	if err != nil {
		cleanup()
		return nil, err
	}
	tlsConf = tlsConf.Clone()
	tlsConf.GetConfigForClient = s.tickets.config
	// Recovery first, so that a panic anywhere after it fails one call only.
	rec := &api.Recoverer{Log: log.With("component", "grpc")}
	creds, err := api.NewCredentials(st)
	if err != nil {
		s.fleet.Stop()
		cleanup()
		return nil, err
	}
	if err := s.recordAdminCredential(); err != nil {
		s.fleet.Stop()
		cleanup()
		return nil, err
	}
	s.creds = newLimitedCreds(credentials.NewTLS(tlsConf), maxHandshakes())
	auth := &api.Authorizer{AgentAllowed: s.fleet.Allowed, CredentialAllowed: creds.Allowed}
	s.grpc = grpc.NewServer(
		grpc.Creds(s.creds),
		grpc.ChainUnaryInterceptor(rec.Unary, auth.Unary, probeUnary(cfg.HandlerProbe)),
		grpc.ChainStreamInterceptor(rec.Stream, auth.Stream, probeStream(cfg.HandlerProbe)),
		grpc.MaxRecvMsgSize(cfg.MaxRecvMsgSize),
		grpc.MaxSendMsgSize(cfg.MaxSendMsgSize),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// Small per-connection buffers: a fleet means many mostly idle
		// streams. No read buffer: the TLS connection below already
		// buffers a record. A small write buffer (agents' acks, heartbeat
		// acks and tasks are tiny), shared: a connection holds one only
		// while it writes. Together ~20 KB less heap per connected agent
		// than 16 KB each way (docs/BENCHMARKS.md, T2).
		grpc.ReadBufferSize(0),
		grpc.WriteBufferSize(4<<10),
		grpc.SharedWriteBuffer(true),
	)
	now := time.Now
	agentv1.RegisterEnrollmentServiceServer(s.grpc, &api.Enrollment{
		Store: st, Fleet: s.fleet, CA: ca, SigningKeys: ring.Published, AgentCertTTL: cfg.AgentCertTTL,
		Log: log.With("component", "enroll"), Now: now,
	})
	agentv1.RegisterAgentServiceServer(s.grpc, &api.Stream{
		Store: st, Fleet: s.fleet, Ingest: s.ingest, Policies: s.policies, Remediation: s.remed, Keys: ring,
		Log: log.With("component", "stream"), Now: now, Streams: streams,
	})
	adminv1.RegisterAdminServiceServer(s.grpc, &api.Admin{
		Store: st, Fleet: s.fleet, Policies: s.policies, CA: ca, Log: log.With("component", "admin"), Now: now,
		OnPolicyChange: s.remed.PolicyChanged, Remediation: s.remed, Keys: ring, Credentials: creds,
	})
	// A change of the published keys reaches every connected agent now
	// (the others get it when they connect, and in every renewal).
	ring.OnChange(func() {
		msg := api.SigningKeySet(ring)
		s.fleet.Connected(func(_ store.Agent, sess *fleet.Session) { sess.TrySend(msg) })
		// Standing orders are re-signed with the active key, so that
		// retiring an old key leaves no connected agent with orders only
		// it signed.
		s.policies.PushOrders(s.fleet, ring.Active, time.Now())
	})

	if cfg.HTTPListen != "" {
		s.httpLis, err = net.Listen("tcp", cfg.HTTPListen)
		if err != nil {
			s.fleet.Stop()
			cleanup()
			return nil, fmt.Errorf("http listen %s: %w", cfg.HTTPListen, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprintln(w, "ok")
		})
		s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	}
	return s, nil
}

// serverNames are the names and IPs the serving certificate is valid for.
func (s *Server) serverNames() []string {
	names := []string{"localhost", "127.0.0.1", "::1"}
	if host, _, err := net.SplitHostPort(s.cfg.Listen); err == nil && host != "" && host != "0.0.0.0" && host != "::" {
		names = append(names, host)
	}
	if h, err := os.Hostname(); err == nil {
		names = append(names, h)
	}
	return append(names, s.cfg.TLSSANs...)
}

// writeAdminConf writes DATA_DIR/admin.conf on first start; later starts
// only update its server address if the listen address changed.
func (s *Server) writeAdminConf() error {
	path := filepath.Join(s.cfg.DataDir, AdminConfFile)
	addr := s.AdminAddr()
	if c, err := adminconf.Load(path); err == nil {
		if c.Server == addr {
			return nil
		}
		c.Server = addr
		return adminconf.Save(path, c)
	} else if _, statErr := os.Stat(path); statErr == nil {
		return fmt.Errorf("existing %s is unreadable: %w (remove it to have a new one written)", path, err)
	}
	certPEM, keyPEM, err := s.ca.IssueClientCert("admin", pki.RoleAdmin, AdminCertTTL)
	if err != nil {
		return err
	}
	if err := adminconf.Save(path, &adminconf.Config{Server: addr, CA: string(s.ca.CertPEM), Cert: string(certPEM), Key: string(keyPEM)}); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	s.log.Info("wrote admin client config", "path", path)
	return nil
}

// AdminAddr is the address clients should dial (wildcards become loopback).
func (s *Server) AdminAddr() string {
	host, port, err := net.SplitHostPort(s.lis.Addr().String())
	if err != nil {
		return s.lis.Addr().String()
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// HTTPAddr is the bound HTTP address ("" if disabled).
func (s *Server) HTTPAddr() string {
	if s.httpLis == nil {
		return ""
	}
	return s.httpLis.Addr().String()
}

// Store exposes the store (tests).
func (s *Server) Store() store.Store { return s.store }

// Fleet exposes the registry (tests).
func (s *Server) Fleet() *fleet.Registry { return s.fleet }

// CA exposes the CA (tests).
func (s *Server) CA() *pki.CA { return s.ca }

// Run serves until ctx is done, then shuts down gracefully.
func (s *Server) Run(ctx context.Context) error {
	if err := s.remed.Start(); err != nil {
		return err
	}
	s.ingest.Start()
	errc := make(chan error, 2)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.grpc.Serve(s.lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			errc <- fmt.Errorf("grpc: %w", err)
		}
	}()
	if s.http != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.http.Serve(s.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("http: %w", err)
			}
		}()
	}
	// Standing orders are re-signed for connected agents well before they
	// expire.
	refreshCtx, stopRefresh := context.WithCancel(ctx)
	defer stopRefresh()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			t := time.NewTimer(s.policies.OrdersRefresh())
			select {
			case <-refreshCtx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			if s.policies.HasAutonomous() {
				s.policies.PushOrders(s.fleet, s.keys.Active, time.Now())
			}
		}
	}()
	// A new session-ticket key every ticketKeyRotate; old ones are
	// accepted for ticketKeyKeep.
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(10 * time.Minute)
		defer t.Stop()
		for {
			select {
			case <-refreshCtx.Done():
				return
			case <-t.C:
			}
			if _, err := s.tickets.rotate(time.Now(), false); err != nil {
				s.log.Error("rotate session ticket keys (the current ones stay in use)", "err", err)
			}
		}
	}()
	s.log.Info("control plane ready", "listen", s.AdminAddr(), "http", s.HTTPAddr(), "data_dir", s.cfg.DataDir,
		"heartbeat_ttl", s.fleet.TTL(), "heartbeat_grace", s.fleet.Grace())
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	stopRefresh()
	s.shutdown()
	return runErr
}

// shutdownGrace bounds how long in-flight calls get to finish once every
// agent stream was closed; then connections are closed.
const shutdownGrace = 2 * time.Second

func (s *Server) shutdown() {
	s.log.Info("control plane stopping")
	start := time.Now()
	// Close agent sessions first so that streams end promptly, and refuse
	// the connections still waiting for a TLS handshake.
	s.fleet.Stop()
	s.creds.stop()
	// Stopping gRPC and committing what the ingest has queued go on at the
	// same time: neither needs the other (batches submitted from now on
	// are refused and never acknowledged; the agents send them again).
	var stopping sync.WaitGroup
	stopping.Add(2)
	go func() {
		defer stopping.Done()
		done := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(done) }()
		t := time.NewTimer(shutdownGrace)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			s.grpc.Stop()
			<-done
		}
	}()
	go func() {
		defer stopping.Done()
		s.ingest.Stop()
	}()
	if s.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.http.Shutdown(ctx)
		cancel()
	}
	stopping.Wait()
	s.remed.Stop()
	s.webhook.Stop()
	s.wg.Wait()
	if err := s.store.Close(); err != nil {
		s.log.Error("close store", "err", err)
	}
	s.log.Info("control plane stopped", "took", time.Since(start).Round(time.Millisecond))
}

type fleetCollector struct {
	f    *fleet.Registry
	desc *prometheus.Desc
}

func (c *fleetCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	for st, n := range c.f.Counts() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), st)
	}
}

// recordAdminCredential lists admin.conf's certificate among the
// credentials (once), so that `tendctl get credentials` shows it and
// `tendctl delete credential admin` can revoke it.
func (s *Server) recordAdminCredential() error {
	c, err := adminconf.Load(filepath.Join(s.cfg.DataDir, AdminConfFile))
	if err != nil {
		return err
	}
	cert, err := pki.ParseCertPEM([]byte(c.Cert))
	if err != nil {
		return fmt.Errorf("admin.conf certificate: %w", err)
	}
	serial := cert.SerialNumber.Text(16)
	all, err := s.store.ListCredentials()
	if err != nil {
		return err
	}
	for _, cr := range all {
		if cr.Serial == serial {
			return nil
		}
	}
	id, err := pki.IdentityOf(cert)
	if err != nil {
		return fmt.Errorf("admin.conf certificate: %w", err)
	}
	return s.store.PutCredential(store.Credential{Name: id.ID, Role: id.Role, Serial: serial,
		IssuedAt: cert.NotBefore, ExpiresAt: cert.NotAfter, IssuedBy: "tend-controlplane (admin.conf)"})
}
