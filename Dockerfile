# syntax=docker/dockerfile:1
# One image for every kmtls process in a cluster: the control plane (`kmtls controlplane`), the
# sidecar (`kmtls proxy`) and the sidecar's init step (`kmtls iptables apply`, which needs iptables).
#
#   docker build -t kmtls/kmtls:$(node -p 'require("./package.json").version') .
#   kmtls install --image kmtls/kmtls:<version> | kubectl apply -f -

ARG NODE_IMAGE=node:20-bookworm-slim

# --- build: compile TypeScript and the original-dst addon, then drop the dev dependencies ---------
FROM ${NODE_IMAGE} AS build
# node-gyp needs Python, make and a C compiler for native/original-dst (SO_ORIGINAL_DST, used by
# the sidecar's transparent interception).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# Dependencies in their own layer, so a source change does not reinstall them. No scripts yet:
# `prepare` builds, and the sources are not here yet.
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY . .
# build-addon.mjs never fails (a laptop without a compiler still gets a working kmtls); the image
# must have the addon, hence the test. The Node image ships its headers under /usr/local/include/node:
# node-gyp uses them rather than downloading (and downloads only if they are missing).
RUN npm run build \
 && if [ -f /usr/local/include/node/node_api.h ]; then export npm_config_nodedir=/usr/local; fi \
 && node scripts/build-addon.mjs \
 && test -f native/original-dst/build/Release/original_dst.node \
 && npm prune --omit=dev --ignore-scripts --no-audit --no-fund

# --- runtime ---------------------------------------------------------------------------------------
FROM ${NODE_IMAGE}
# iptables for the init step; uid 1337 is the sidecar's (Istio's), whose own traffic iptables lets
# out without redirecting it. The control plane runs as the same non-root user.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1337 kmtls \
 && useradd --uid 1337 --gid 1337 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin kmtls
ENV NODE_ENV=production
WORKDIR /app
# The layout bin/kmtls.js and the addon loader expect: /app/bin, /app/dist/bundle, /app/native/...
# The bundle holds kmtls and its dependencies except @kubernetes/client-node, from node_modules.
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist/bundle ./dist/bundle
COPY --from=build /app/bin ./bin
COPY --from=build /app/native/original-dst/build/Release/original_dst.node ./native/original-dst/build/Release/original_dst.node
# Numeric, so that the kubelet can check runAsNonRoot without reading /etc/passwd. The init step
# overrides it (it runs as root with NET_ADMIN and NET_RAW only).
USER 1337:1337
ENTRYPOINT ["node", "/app/bin/kmtls.js"]
