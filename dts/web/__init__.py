"""dts-web: the web dashboard, another client of dts-server (through dts.client.api)."""
