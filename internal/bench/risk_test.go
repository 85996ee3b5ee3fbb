package bench

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"

	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/internal/mesh"
	"github.com/quantmesh/quantmesh/internal/mesh/meshtest"
	"github.com/quantmesh/quantmesh/pkg/store/storetest"
)

// riskMesh serves RiskService in process on databaseURL (empty: SQLite in
// a temporary directory) and returns a client connection to it.
func riskMesh(t *testing.T, databaseURL string) (*grpc.ClientConn, string) {
	t.Helper()
	if databaseURL == "" {
		databaseURL = filepath.Join(t.TempDir(), "q.db")
	}
	cfg := meshtest.Config(t, mesh.Risk)
	cfg.Store.URL = databaseURL
	m, conn := meshtest.Serve(t, cfg)
	return conn, m.DB.Mode()
}

// TestRiskScenario runs `quantmesh bench risk` briefly on both stores:
// every operation succeeds and every order is approved.
func TestRiskScenario(t *testing.T) {
	t.Parallel()
	backends := map[string]func(t *testing.T) string{
		"sqlite":   func(*testing.T) string { return "" },
		"postgres": func(t *testing.T) string { return storetest.NewPostgresDatabase(t) },
	}
	for name, dbURL := range backends {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			conn, mode := riskMesh(t, dbURL(t))
			spec, ok := Lookup("risk")
			if !ok {
				t.Fatal("risk scenario not registered")
			}
			runner := Runner{Duration: time.Second, Warmup: 200 * time.Millisecond, Concurrency: 4,
				Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			rep, err := runner.Run(context.Background(), Env{Conn: conn, Target: "in-process", InProcess: true, Store: mode}, spec.New())
			if err != nil {
				t.Fatal(err)
			}
			if rep.Ops() == 0 || rep.Errors != 0 || rep.BaselineErrors != 0 {
				t.Fatalf("ops %d, errors %d, baseline errors %d: %v", rep.Ops(), rep.Errors, rep.BaselineErrors, rep.ErrorSamples)
			}
			if rep.Counters["approved"] != rep.Ops() || rep.Counters["rejected"] != 0 {
				t.Errorf("approved %d, rejected %d (rules %v), want all %d approved",
					rep.Counters["approved"], rep.Counters["rejected"], rep.Fields["rejected_rules"], rep.Ops())
			}
			if rep.Fields["accounts"] != riskAccounts || rep.Fields["op"] != "CheckOrder" {
				t.Errorf("fields %v", rep.Fields)
			}

			// Setup created every account with every limit set.
			client := riskv1.NewRiskServiceClient(conn)
			prefix, _ := rep.Fields["account_prefix"].(string)
			for _, k := range []int{0, riskAccounts - 1} {
				got, err := client.GetLimits(context.Background(), &riskv1.GetLimitsRequest{AccountId: prefix + strconv.Itoa(k)})
				if err != nil {
					t.Fatal(err)
				}
				l := got.GetLimits()
				if l.MaxPositionQuantity == nil || l.MaxLeverage == nil || l.MaxOrdersPerSecond == nil || l.GetDuplicateWindow() == nil ||
					l.MaxDrawdownPercent == nil || len(l.GetRestrictedSymbols()) == 0 || l.GetReservationTtl().AsDuration() != riskTTL {
					t.Errorf("account %d limits %v, want every limit set", k, l)
				}
			}
			if _, err := rep.MarshalJSON(); err != nil {
				t.Error(err)
			}
		})
	}
}
