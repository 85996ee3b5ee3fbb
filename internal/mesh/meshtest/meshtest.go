// Package meshtest starts in-process meshes for tests.
package meshtest

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/quantmesh/quantmesh/internal/mesh"
	"github.com/quantmesh/quantmesh/pkg/auth"
	"github.com/quantmesh/quantmesh/pkg/server"
	"github.com/quantmesh/quantmesh/pkg/store"
	"github.com/quantmesh/quantmesh/pkg/telemetry"
	"github.com/quantmesh/quantmesh/services/experiment"
	"github.com/quantmesh/quantmesh/services/risk"
)

// Config is a mesh of the given services on loopback with free ports and
// SQLite in the test's temporary directory, with the services' defaults.
func Config(t testing.TB, services ...string) mesh.Config {
	t.Helper()
	return mesh.Config{
		Server:     server.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", ShutdownTimeout: 5 * time.Second},
		Store:      store.Config{URL: filepath.Join(t.TempDir(), "q.db")},
		Services:   services,
		Experiment: experiment.DefaultConfig(),
		Risk:       risk.DefaultConfig(),
	}
}

// Start starts a mesh for the rest of the test; it is shut down when the
// test ends, and a failed shutdown fails the test.
func Start(t testing.TB, cfg mesh.Config) *mesh.Mesh {
	t.Helper()
	return StartWith(t, cfg, telemetry.Noop())
}

// StartWith starts a mesh as Start does, with the given telemetry (for
// tests that record its spans or scrape its metrics).
func StartWith(t testing.TB, cfg mesh.Config, tel *telemetry.Telemetry) *mesh.Mesh {
	t.Helper()
	if cfg.Keys.Enabled() && cfg.PeerAPIKey == "" {
		// The mesh's services call each other with a key of their own.
		cfg.PeerAPIKey = "meshtest-peer-key-0123456789"
		if err := cfg.Keys.Add(cfg.PeerAPIKey, auth.Principal{Name: "meshtest-peer", Role: auth.RoleAdmin}); err != nil {
			t.Fatal(err)
		}
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	m, err := mesh.Start(ctx, cfg, log, tel)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return m
}

// Serve starts a mesh as Start does and returns it with a plaintext client
// connection to it, closed when the test ends.
func Serve(t testing.TB, cfg mesh.Config) (*mesh.Mesh, *grpc.ClientConn) {
	t.Helper()
	return ServeWith(t, cfg, telemetry.Noop())
}

// ServeWith starts a mesh as StartWith does and returns it with a plaintext
// client connection to it, closed when the test ends.
func ServeWith(t testing.TB, cfg mesh.Config, tel *telemetry.Telemetry, opts ...grpc.DialOption) (*mesh.Mesh, *grpc.ClientConn) {
	t.Helper()
	m := StartWith(t, cfg, tel)
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	conn, err := grpc.NewClient(m.Server.GRPCTarget(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return m, conn
}
