# The operator image, FROM scratch: no shell, no package manager, nothing but the binary and
# the CA bundle the providers' TLS is verified against. Built by `make image`
# (scripts/image.sh) from the context target/image/, which holds:
#   oauth-operator           the release binary, statically linked (glibc, crt-static: no
#                            loader and no NSS modules; /etc/hosts and DNS still resolve)
#   ca-certificates.crt      the build host's CA bundle (rustls reads the system roots)
# It needs no registry: no base image is pulled.
FROM scratch
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY oauth-operator /oauth-operator
# The chart's runAsUser; the chart passes `run` and its flags as args.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/oauth-operator"]
CMD ["run"]
