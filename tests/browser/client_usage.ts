// Type-checked by `tsc --noEmit -p tsconfig.json` (make lint): the API of
// presence-client.d.ts as an application uses it.
import {
  type Member,
  type MemberEvent,
  PresenceClient,
  PresenceError,
  type StateEvent,
  UnauthorizedError,
} from "../../presence/static/presence-client.js";

const presence = new PresenceClient({
  url: "https://example.test/presence",
  client: "alice",
  rooms: ["lobby"],
  watch: ["bob"],
  occupancy: ["hall"],
  data: { status: "here" },
  getToken: async ({ reason }) => (reason === "unauthorized" ? null : "token"),
  minDelay: 500,
});

const off: () => void = presence.on("online", (event: MemberEvent) => {
  const room: string | undefined = event.room;
  const synthetic: boolean = event.synthetic;
  console.log(event.client, event.server, event.data?.status, room, synthetic, event.at);
});
presence.on("sync", ({ reset, rooms }) => console.log(reset, rooms.length));
presence.on("occupancy", ({ room, count }) => console.log(room, count + 1));
presence.on("state", ({ from, to, error }: StateEvent) => {
  if (to === "closed" && error instanceof UnauthorizedError) console.log(from, "sign in again");
  if (error instanceof PresenceError) console.log(error.status);
});
off();

presence.connect();
const members: ReadonlyMap<string, Member> = presence.members("lobby");
const everyone: ReadonlyMap<string, Member> = presence.members();
const count: number | undefined = presence.count("hall");
console.log(members.size, everyone.get("bob")?.server, count, presence.state);
presence.setData("lobby", { status: "away" }).then((changed: boolean) => console.log(changed));
presence.close();

// @ts-expect-error: not an event of the client
presence.on("message", () => {});
