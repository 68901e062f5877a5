package ca

import "errors"

// ErrInvalidCSR is returned (wrapped with the reason) when a certificate
// signing request is malformed or asks for something this CA will not sign.
// It is the caller's fault, so a gRPC layer maps it to InvalidArgument.
var ErrInvalidCSR = errors.New("invalid certificate signing request")
