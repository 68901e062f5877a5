package server

import (
	"sync/atomic"
	"testing"
	"time"

	pb "istio.io/api/security/v1alpha1"
)

// BenchmarkCreateCertificate measures certificates issued per second over
// gRPC and TLS on loopback: token check, CSR parsing and signature
// verification, signing, encoding. The CSRs are made beforehand; the
// client's own work (TLS, protobuf) shares the machine with the server.
func BenchmarkCreateCertificate(b *testing.B) {
	e := staticEnvB(b)
	const nCSR = 64
	reqs := make([]*pb.IstioCertificateRequest, nCSR)
	for i := range reqs {
		reqs[i] = &pb.IstioCertificateRequest{Csr: csrFor(b, nil, apiID.String()), ValidityDuration: 3600, Metadata: impersonate(apiID.String())}
	}
	ctx := withToken("node1-secret")
	// Warm the connection up.
	if _, err := e.client.CreateCertificate(ctx, reqs[0]); err != nil {
		b.Fatal(err)
	}
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := reqs[next.Add(1)%nCSR]
			if _, err := e.client.CreateCertificate(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "certs/s")
}

func staticEnvB(b *testing.B) *env {
	b.Helper()
	s, err := ParseStatic([]byte(nodesYAML), td)
	if err != nil {
		b.Fatal(err)
	}
	return startServer(b, DefaultConfig(), s, s)
}
