package mesh_test

import (
	"context"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	experimentv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/experiment/v1"
	inferencev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/inference/v1"
	metacontrollerv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/metacontroller/v1"
	regimev1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/regime/v1"
	riskv1 "github.com/quantmesh/quantmesh/gen/go/quantmesh/risk/v1"
	"github.com/quantmesh/quantmesh/internal/learner"
	"github.com/quantmesh/quantmesh/internal/mesh"
	"github.com/quantmesh/quantmesh/internal/mesh/meshtest"
	"github.com/quantmesh/quantmesh/services/metacontroller"
)

// scrape reads /metrics in the Prometheus text format (what a scraper gets
// unless it asks for OpenMetrics).
func scrape(t *testing.T, m *mesh.Mesh) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + m.Server.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// documented is one row of docs/metrics.md.
type documented struct {
	typ     string          // counter, gauge, histogram
	labels  map[string]bool // label name → on every series (false: on some only)
	appears string          // start, first use, rare
	lineNo  int
}

var (
	labelCell = regexp.MustCompile("(\\[)?`([A-Za-z_][A-Za-z0-9_]*)`(\\])?")
	appearsIn = map[string]bool{"start": true, "first use": true, "rare": true}
	typesIn   = map[string]bool{"counter": true, "gauge": true, "histogram": true, "summary": true}
)

// catalogue parses the tables of docs/metrics.md: every row whose first
// cell is a backticked family name.
func catalogue(t *testing.T) map[string]documented {
	t.Helper()
	const path = "../../docs/metrics.md"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cat := map[string]documented{}
	for i, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.SplitN(line, "|", 6)
		if len(cells) != 6 {
			t.Fatalf("%s:%d: want | Family | Type | Labels | Appears | Meaning |, got %q", path, i+1, line)
		}
		name := strings.Trim(strings.TrimSpace(cells[1]), "`")
		d := documented{typ: strings.TrimSpace(cells[2]), labels: map[string]bool{}, appears: strings.TrimSpace(cells[4]), lineNo: i + 1}
		if !typesIn[d.typ] {
			t.Errorf("%s:%d: %s: unknown type %q", path, i+1, name, d.typ)
		}
		if !appearsIn[d.appears] {
			t.Errorf("%s:%d: %s: Appears is %q, want start, first use or rare", path, i+1, name, d.appears)
		}
		if labels := strings.TrimSpace(cells[3]); labels != "—" {
			for _, m := range labelCell.FindAllStringSubmatch(labels, -1) {
				d.labels[m[2]] = m[1] == "" // [`name`] is on some series only
			}
			if len(d.labels) == 0 {
				t.Errorf("%s:%d: %s: cannot read labels %q (want `a`, [`b`] or —)", path, i+1, name, labels)
			}
		}
		if prev, ok := cat[name]; ok {
			t.Errorf("%s:%d: %s is also documented on line %d", path, i+1, name, prev.lineNo)
		}
		cat[name] = d
	}
	if len(cat) == 0 {
		t.Fatalf("%s: no metric tables found", path)
	}
	return cat
}

// ignoredLabel reports the labels every OTel family carries, which the
// catalogue names once rather than on every row.
func ignoredLabel(name string) bool { return strings.HasPrefix(name, "otel_scope_") }

// undocumentedOK reports the families the catalogue leaves to the Go and
// process collectors' documentation.
func undocumentedOK(family string) bool {
	return strings.HasPrefix(family, "go_") || strings.HasPrefix(family, "process_")
}

// compare checks a scrape against the catalogue: every family exported is
// documented with its type and label names.
func compare(t *testing.T, when string, cat map[string]documented, fams map[string]*dto.MetricFamily) {
	t.Helper()
	for _, name := range slices.Sorted(maps.Keys(fams)) {
		if undocumentedOK(name) {
			continue
		}
		f := fams[name]
		got := strings.ToLower(f.GetType().String())
		d, ok := cat[name]
		if !ok {
			t.Errorf("%s: metric %s (%s) exported but not in docs/metrics.md", when, name, got)
			continue
		}
		if got != d.typ {
			t.Errorf("%s: metric %s is a %s on /metrics but a %s in docs/metrics.md (line %d)", when, name, got, d.typ, d.lineNo)
		}
		seen := map[string]bool{}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if !ignoredLabel(l.GetName()) {
					seen[l.GetName()] = true
				}
			}
		}
		for _, l := range slices.Sorted(maps.Keys(seen)) {
			if _, ok := d.labels[l]; !ok {
				t.Errorf("%s: metric %s has label %q on /metrics, not in docs/metrics.md (line %d)", when, name, l, d.lineNo)
			}
		}
		for _, l := range slices.Sorted(maps.Keys(d.labels)) {
			if d.labels[l] && !seen[l] {
				t.Errorf("%s: metric %s has no label %q on /metrics, though docs/metrics.md (line %d) says it has (bracket it if only some series have it)", when, name, l, d.lineNo)
			}
		}
	}
}

// missing lists the documented families with an Appears in want that fams
// lacks.
func missing(cat map[string]documented, fams map[string]*dto.MetricFamily, want ...string) []string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(cat)) {
		if _, ok := fams[name]; !ok && slices.Contains(want, cat[name].appears) {
			out = append(out, name)
		}
	}
	return out
}

// waitFamilies scrapes until every documented family with an Appears in
// want is on /metrics or the deadline passes, and returns the last scrape
// and what it still lacked.
func waitFamilies(t *testing.T, m *mesh.Mesh, cat map[string]documented, deadline time.Time, want ...string) (map[string]*dto.MetricFamily, []string) {
	t.Helper()
	for {
		fams := scrape(t, m)
		gone := missing(cat, fams, want...)
		if len(gone) == 0 || time.Now().After(deadline) {
			return fams, gone
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMetricsCatalogue checks docs/metrics.md against a running mesh (every
// service, the forensics worker and the online learner): before any
// traffic, every family documented as there at start is on /metrics; after
// a little traffic through all five services and the REST gateway, every
// family documented as appearing on first use is too; and every family on
// /metrics, before and after, is documented with its type and label names.
func TestMetricsCatalogue(t *testing.T) {
	t.Parallel()
	cat := catalogue(t)
	cfg := meshtest.Config(t, mesh.Runnable()...)
	lc := learner.DefaultConfig()
	cfg.Learner = &lc
	cfg.DataDir = t.TempDir() // so quantmesh_store_disk_used_ratio is exported
	m, conn := meshtest.Serve(t, cfg)

	// The learner registers its instruments when it starts, a moment after
	// the mesh serves.
	fams, gone := waitFamilies(t, m, cat, time.Now().Add(5*time.Second), "start")
	for _, name := range gone {
		t.Errorf("metric %s is documented as present at start but is not on /metrics before any traffic", name)
	}
	compare(t, "at start", cat, fams)

	// The training is the slow part (seconds under the race detector).
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	driveAll(ctx, t, m, conn)
	// Forensics stores the decisions asynchronously.
	fams, gone = waitFamilies(t, m, cat, time.Now().Add(5*time.Second), "start", "first use")
	for _, name := range gone {
		t.Errorf("metric %s is documented as appearing at start or on first use but is not on /metrics after traffic through every service", name)
	}
	compare(t, "after traffic", cat, fams)

	// The training's episodes were counted, one per epoch.
	var episodes float64
	for _, m := range fams["quantmesh_metacontroller_training_episodes_total"].GetMetric() {
		episodes += m.GetCounter().GetValue()
	}
	if episodes != float64(catalogueEpisodes) {
		t.Errorf("quantmesh_metacontroller_training_episodes_total adds up to %v after a %d-epoch training", episodes, catalogueEpisodes)
	}
}

// driveAll sends a little traffic through all five services: a run with a
// logged metric, a served policy and some predictions, ingested bars, a
// checked order and an allocation query.
func driveAll(ctx context.Context, t *testing.T, m *mesh.Mesh, conn grpc.ClientConnInterface) {
	t.Helper()
	// One call through the REST gateway.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.Server.HTTPAddr()+"/v1/experiments", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/experiments: %s", resp.Status)
	}
	exp := experimentv1.NewExperimentServiceClient(conn)
	// One call that fails, so the RPC metrics carry their error labels.
	if _, err := exp.GetExperiment(ctx, &experimentv1.GetExperimentRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("GetExperiment without an id: %v, want InvalidArgument", err)
	}
	e, err := exp.CreateExperiment(ctx, &experimentv1.CreateExperimentRequest{Name: "catalogue"})
	if err != nil {
		t.Fatal(err)
	}
	run, err := exp.CreateRun(ctx, &experimentv1.CreateRunRequest{ExperimentId: e.GetExperiment().GetExperimentId()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exp.LogBatch(ctx, &experimentv1.LogBatchRequest{RunId: run.GetRun().GetRunId(),
		Metrics: []*experimentv1.Metric{{Key: "loss", Value: 1, Step: 0, TimestampMs: 1_700_000_000_000}}}); err != nil {
		t.Fatal(err)
	}

	promoteFourInputPolicy(ctx, t, exp)
	inf := inferencev1.NewInferenceServiceClient(conn)
	for served := 0; served < 3; {
		_, err := inf.Predict(ctx, &inferencev1.PredictRequest{ModelName: "policy", Symbol: "CAT", Features: []float64{1, 2, 3, 4}})
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("Predict: %v", err)
			}
			time.Sleep(20 * time.Millisecond) // the model is still loading
			continue
		}
		served++
	}

	// A regime model active for CAT and enough bars past its feature
	// windows' warm-up for regime states (and so regime probabilities).
	reg := regimev1.NewRegimeServiceClient(conn)
	if _, err := reg.FitModel(ctx, &regimev1.FitModelRequest{
		Source:          &regimev1.TrainingSource{Source: &regimev1.TrainingSource_Dataset{Dataset: &regimev1.DatasetSlice{DatasetId: "eustock", Columns: []string{"DAX"}, EndIndex: 400}}},
		Mixture:         &regimev1.MixtureConfig{Seed: proto.Int64(1)},
		ActivateSymbols: []string{"CAT"},
	}); err != nil {
		t.Fatal(err)
	}
	st, err := reg.IngestBars(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var bars []*regimev1.Bar
	start := time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)
	for i := range 40 {
		p := 100 * math.Exp(0.01*math.Sin(float64(i)))
		bars = append(bars, &regimev1.Bar{Symbol: "CAT", Time: timestamppb.New(start.Add(time.Duration(i) * 24 * time.Hour)), Open: p, High: p, Low: p, Close: p})
	}
	if err := st.Send(&regimev1.IngestBarsRequest{Bars: bars}); err != nil {
		t.Fatal(err)
	}
	if resp, err := st.CloseAndRecv(); err != nil || resp.GetRegimesUpdated() == 0 {
		t.Fatalf("IngestBars: %v, %v; want regime states", resp, err)
	}

	risk := riskv1.NewRiskServiceClient(conn)
	if _, err := risk.UpdatePrices(ctx, &riskv1.UpdatePricesRequest{Prices: []*riskv1.PriceUpdate{{Symbol: "CAT", Price: 100}}}); err != nil {
		t.Fatal(err)
	}
	cash, maxQty := 1e6, 10.0
	if _, err := risk.SetLimits(ctx, &riskv1.SetLimitsRequest{Limits: &riskv1.Limits{AccountId: "catalogue", MaxOrderQuantity: &maxQty},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"max_order_quantity"}}, CashBalance: &cash}); err != nil {
		t.Fatal(err)
	}
	// One order within the limit and one beyond it, so rejections count
	// too; the approved one is filled.
	for i, qty := range []float64{1, 100} {
		res, err := risk.CheckOrder(ctx, &riskv1.CheckOrderRequest{Order: &riskv1.Order{AccountId: "catalogue", ClientOrderId: fmt.Sprintf("c-%d", i), Symbol: "CAT",
			Side: riskv1.OrderSide_ORDER_SIDE_BUY, Type: riskv1.OrderType_ORDER_TYPE_MARKET, Quantity: qty}})
		if err != nil {
			t.Fatal(err)
		}
		if res.GetResult().GetDecision() != riskv1.Decision_DECISION_APPROVED {
			continue
		}
		if _, err := risk.ApplyFill(ctx, &riskv1.ApplyFillRequest{AccountId: "catalogue", Fill: &riskv1.Fill{
			FillId: fmt.Sprintf("f-%d", i), ReservationId: res.GetResult().GetReservation().GetReservationId(), Quantity: qty, Price: 100}}); err != nil {
			t.Fatal(err)
		}
	}

	meta := metacontrollerv1.NewMetaControllerServiceClient(conn)
	if _, err := meta.ListStrategies(ctx, &metacontrollerv1.ListStrategiesRequest{}); err != nil {
		t.Fatal(err)
	}
	// A small training: as many epochs (episodes) as the shortest rolling
	// window, so the training gauges have a full window.
	if _, err := meta.TrainPolicy(ctx, &metacontrollerv1.TrainPolicyRequest{
		Dataset: &metacontrollerv1.Dataset{Source: &metacontrollerv1.Dataset_Bundled{Bundled: &metacontrollerv1.BundledDataset{DatasetId: "eustock", Column: "DAX"}},
			Range: &metacontrollerv1.Dataset_IndexRange{IndexRange: &metacontrollerv1.IndexRange{Start: 0, End: 400}}},
		TrainFraction: proto.Float64(0.5),
		Hrl:           &metacontrollerv1.HrlConfig{Epochs: proto.Int32(int32(catalogueEpisodes)), HiddenUnits: proto.Int32(4), Seed: proto.Int64(1)},
	}); err != nil {
		t.Fatal(err)
	}
}

// catalogueEpisodes is the epochs, and so episodes, of driveAll's training.
var catalogueEpisodes = metacontroller.RollingWindows[0]
