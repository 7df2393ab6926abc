// An example GraphQL Code Generator config for a portal built on Upkeep: copy it next to your
// client; `schema` is the SDL (`schema/schema.graphql` in this repository, or
// `upkeep-server schema > upkeep.graphql`), `documents` your operations. Upkeep's CI runs this
// very file over `tests/portal/operations/` and type-checks `tests/portal/client.ts` against the
// output with `tsc --strict` (tests/portal/run.sh).
//
//   npm install -D @graphql-codegen/cli @graphql-codegen/typescript @graphql-codegen/typescript-operations
//   npx graphql-codegen --config codegen.ts
import type { CodegenConfig } from '@graphql-codegen/cli';

const config: CodegenConfig = {
  // The paths a portal would use; Upkeep's CI sets them to its own (tests/portal/run.sh).
  schema: process.env.UPKEEP_SCHEMA ?? 'upkeep.graphql',
  documents: process.env.UPKEEP_OPERATIONS ?? 'src/**/*.graphql',
  generates: {
    [process.env.UPKEEP_GENERATED ?? 'src/generated/upkeep.ts']: {
      plugins: ['typescript', 'typescript-operations'],
      config: {
        // Every custom scalar of the schema, mapped; an unmapped one fails generation.
        strictScalars: true,
        scalars: {
          // RFC 3339 text in UTC, e.g. "2026-11-30T12:00:00.000Z": parse it where you show it.
          DateTime: 'string',
          // Any JSON value (scripts' structured output, parameters): narrow it before use.
          JSON: 'unknown',
          // Multipart uploads (GraphQL multipart request spec): a browser File or Blob.
          Upload: 'File | Blob',
          ID: 'string',
        },
        enumsAsTypes: true,
        useTypeImports: true,
        avoidOptionals: { field: true, inputValue: false, object: true },
        nonOptionalTypename: false,
        skipTypename: true,
      },
    },
  },
};

export default config;
